"""Accuracy vs estimated ASIC area and FPGA energy per image, across bit mixes.

Reads result files in JSON Lines form (one object per line) with at least ``top1`` and
a ``config`` holding the weight and activation bits, under any of these keys:
``wbits``/``abits``, ``weight_bits``/``act_bits``, ``bits`` (both), or the recipe form
``quant.default.weight.bits`` / ``quant.default.act.bits``. Bits may be numbers or mixes
(``"70/20/10"``). Each point is costed with the paper's scaling at
``b = sqrt(wbits * abits)`` on one workload. matplotlib is imported only here.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

from hbnn.errors import ConfigError
from hbnn.io import read_jsonl
from hbnn.hw.platforms import Catalog, load_catalog
from hbnn.hw.scaling import scale
from hbnn.hw.validate import coerce_bits

__all__ = ["read_results", "result_bits", "cost_points", "plot_accuracy_vs_cost"]

_BIT_KEYS = (("wbits", "abits"), ("weight_bits", "act_bits"), ("bits", "bits"))


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse a JSONL result file; ConfigError names the line of any invalid JSON."""
    try:
        return read_jsonl(path, ConfigError)
    except OSError as exc:
        raise ConfigError(f"results: cannot read {os.fspath(path)!r}: {exc.strerror}") from None


def _quant_bits(config: dict[str, Any]) -> tuple[Any, Any] | None:
    default = (config.get("quant") or {}).get("default") or {}
    weight, act = default.get("weight") or {}, default.get("act") or {}
    if "bits" in weight and "bits" in act:
        return weight["bits"], act["bits"]
    return None


def result_bits(record: dict[str, Any]) -> tuple[float, float] | None:
    """``(wbits, abits)`` of a result record, or None if its config has no bits."""
    config = record.get("config")
    if not isinstance(config, dict):
        return None
    pair = next(((config[w], config[a]) for w, a in _BIT_KEYS if w in config and a in config), None)
    pair = pair or _quant_bits(config)
    if pair is None:
        return None
    return coerce_bits(pair[0], "config.wbits"), coerce_bits(pair[1], "config.abits")


def cost_points(
    records: list[dict[str, Any]],
    *,
    catalog: Catalog | None = None,
    workload: str = "vgg8",
    fpga: str = "zc706",
    asic: str = "alemdar2017",
) -> list[dict[str, Any]]:
    """One point per usable record: bits, top-1, ASIC area (mm^2) and FPGA energy (J/image)."""
    catalog = catalog or load_catalog()
    work = catalog.workload(workload)
    fpga_p, asic_p = catalog.platform(fpga), catalog.platform(asic)
    points = []
    for record in records:
        bits, top1 = result_bits(record), record.get("top1")
        if bits is None or not isinstance(top1, (int, float)):
            continue
        b = math.sqrt(bits[0] * bits[1])
        on_fpga = scale(fpga_p, b, op_ratio=work.op_ratio, fpga_occupancy=work.fpga_occupancy)
        on_asic = scale(asic_p, b, op_ratio=work.op_ratio)
        points.append(
            {
                "wbits": bits[0],
                "abits": bits[1],
                "bits": b,
                "top1": float(top1),
                "area_mm2": on_asic.area_mm2,
                "energy_per_image_j": on_fpga.energy_per_image_j,
            }
        )
    return points


def plot_accuracy_vs_cost(points: list[dict[str, Any]], out: str | os.PathLike, *, title: str = "") -> None:
    """Two panels — top-1 vs ASIC area, top-1 vs FPGA energy/image — written atomically to ``out``.

    Raises:
        ConfigError: no points (no record had bits and ``top1``).
    """
    if not points:
        raise ConfigError("results: no record has both config bits and top1; nothing to plot")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plot: matplotlib is not installed (pip install 'hbnn[plot]')") from None
    from hbnn.io import atomic_write_bytes

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    points = sorted(points, key=lambda p: p["bits"])
    panels = (("area_mm2", 1.0, "estimated ASIC area (mm$^2$)"), ("energy_per_image_j", 1e6, "estimated FPGA energy per image (µJ)"))
    for i, (key, factor, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        xs, ys = [p[key] * factor for p in points], [p["top1"] for p in points]
        ax.plot(xs, ys, "o-")
        for p, x, y in zip(points, xs, ys):
            ax.annotate(f"{p['wbits']:g}w/{p['abits']:g}a", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title or "Accuracy vs estimated hardware cost (paper scaling; estimates)")
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(os.fspath(out))[1].lstrip(".").lower() or "png")
    atomic_write_bytes(out, buf.getvalue())
