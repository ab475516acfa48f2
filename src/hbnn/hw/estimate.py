"""Estimate any network on every platform, with both cost models, from its layer profiles.

The entry points take :class:`~hbnn.hw.profile.LayerProfile` lists (from
:func:`~hbnn.hw.profile.profile_model` on an ``nn.Module`` with hbnn layers, or from a
built-in layer table) and return plain dicts ready for JSON. Everything they report is
an *estimate* of a hypothetical accelerator, labelled as such in every result.

For the paper's scaling a network is summarised by two numbers: its bits ``b`` (the
MAC-weighted ``sqrt(m*n)`` of its quantized layers, :func:`~hbnn.hw.profile.quantized_bits`)
and its op ratio ``R = MACs / MACs_baseline`` to the platform's baseline network.

Weight memory is reported twice: the paper's ``sum weights_l * wbits_l`` and, beside it,
the map-aware figure that adds each binarized layer's bit map and scales
(:mod:`hbnn.hw.maps`).
"""

from __future__ import annotations

from typing import Any, Sequence

from hbnn.errors import ConfigError
from hbnn.hw.dataflow import dataflow_estimate, luts_for_kfps
from hbnn.hw.maps import DEFAULT_MAP_CODE, network_storage
from hbnn.hw.platforms import Catalog, Platform, load_catalog
from hbnn.hw.profile import LayerProfile, op_view, profile_model, quantized_bits
from hbnn.hw.scaling import scale
from hbnn.hw.workloads import workload_layers

__all__ = ["ESTIMATE_LABEL", "network_stats", "estimate_layers", "estimate_module", "compare_table2"]

ESTIMATE_LABEL = "ESTIMATE from hbnn's hardware cost model (paper scaling + dataflow model); not a measurement"


def network_stats(
    layers: Sequence[LayerProfile], structure: str | None = None, map_code: str = DEFAULT_MAP_CODE
) -> dict[str, Any]:
    """Totals: MACs, weights, weight memory ``sum weights_l * wbits_l`` (bits, the paper's),
    bits ``b``, the share of MACs in float (unquantized) layers, and the map-aware weight
    memory: ``weight_memory_map_aware_bits`` (the paper's + maps + scales) and
    ``weight_storage`` (:func:`hbnn.hw.maps.network_storage` over binarized weights, None
    when there are none; ``structure`` overrides each layer's own)."""
    if not layers:
        raise ConfigError("layers: the model has no nn.Conv2d or nn.Linear layer to cost")
    macs = sum(layer.macs for layer in layers)
    float_macs = sum(layer.macs for layer in layers if not layer.quantized)
    paper = sum(layer.weight_bits for layer in layers)
    storage, _ = network_storage(layers, structure, map_code)
    extra = 0.0 if storage is None else storage["map_bits"] + storage["scale_bits"]
    return {
        "layers": len(layers),
        "macs": macs,
        "weights": sum(layer.weights for layer in layers),
        "weight_memory_bits": paper,
        "weight_memory_map_aware_bits": paper + extra,
        "weight_storage": storage,
        "bits": quantized_bits(layers),
        "float_mac_share": float_macs / macs,
    }


def _platform_estimate(
    platform: Platform,
    layers: Sequence[LayerProfile],
    stats: dict[str, Any],
    unfolding: float | None,
    lut_budget: float | None,
) -> dict[str, Any]:
    """Both models on one platform; the dataflow budget defaults to the scaling's occupancy."""
    ratio = stats["macs"] / platform.baseline.macs
    scaling = scale(platform, stats["bits"], unfolding=unfolding if platform.kind == "fpga" else None, op_ratio=ratio)
    out: dict[str, Any] = {"platform": platform.name, "kind": platform.kind, "op_ratio": ratio}
    out["paper_scaling"] = scaling.to_dict()
    if platform.kind == "asic" and unfolding not in (None, 1):
        out["paper_scaling"]["notes"].append(f"unfolding {unfolding:g}x ignored: an ASIC's throughput is fixed")
    if platform.kind == "fpga" and platform.dataflow is not None:
        budget = lut_budget if lut_budget is not None else scaling.occupancy
        out["dataflow"] = dataflow_estimate(platform, layers, lut_budget=budget).to_dict()
    return out


def estimate_layers(
    layers: Sequence[LayerProfile],
    *,
    catalog: Catalog | None = None,
    platforms: Sequence[str] | None = None,
    unfolding: float | None = None,
    lut_budget: float | None = None,
    per_layer: bool = False,
    structure: str | None = None,
    map_code: str = DEFAULT_MAP_CODE,
) -> dict[str, Any]:
    """Estimate a profiled network on ``platforms`` (default: all known).

    Args:
        layers: the network's layer profiles.
        catalog: platforms and workloads (default: the packaged ones).
        platforms: platform names; unknown names raise a ConfigError listing the known.
        unfolding: FPGA unfolding ``k`` of the paper's rule (capped at the device).
        lut_budget: dataflow LUT budget as a fraction of the device (default: the
            scaling model's occupancy, so both models spend the same LUTs).
        per_layer: include per-layer profiles, op counts and map-aware storage (``storage``).
        structure: bit-map structure for every binarized layer (None: each layer's own from
            its quant config, else ``entry``); see :mod:`hbnn.hw.maps`.
        map_code: ``entropy``, ``fixed`` (default) or ``packed``.

    Returns:
        ``{"estimate": True, "label", "network", "ops", "notes", "platforms": [...]}`` where each
        platform has ``paper_scaling`` (occupancy or area, kFPS, W, energy per image)
        and, for FPGAs with dataflow constants, ``dataflow``.

    Raises:
        ConfigError: no quantized layer (nothing for the paper's bits-based rules to scale).
    """
    catalog = catalog or load_catalog()
    stats = network_stats(layers, structure, map_code)
    if stats["bits"] is None:
        raise ConfigError(
            "model: no layer has both weight and activation quantizers; give --wbits/--abits "
            "or a model with hbnn layers (HBConv2d/HBLinear)"
        )
    names = list(platforms) if platforms else sorted(catalog.platforms)
    chosen = [catalog.platform(n) for n in names]
    ops = op_view(layers)
    if not per_layer:
        ops.pop("layers")
    report = {"estimate": True, "label": ESTIMATE_LABEL, "network": stats, "ops": ops, "notes": []}
    if per_layer:
        _, storage = network_storage(layers, structure, map_code)
        report["layers"] = [{**layer.to_dict(), "storage": st} for layer, st in zip(layers, storage)]
    report["platforms"] = [_platform_estimate(p, layers, stats, unfolding, lut_budget) for p in chosen]
    return report


def estimate_module(model: Any, input_shape: Sequence[int], **kwargs: Any) -> dict[str, Any]:
    """:func:`estimate_layers` on ``profile_model(model, input_shape)``.

    For any ``nn.Module`` with hbnn layers (bits come from their ``realized_bits()``),
    e.g. a trained run or packed file rebuilt as ``hbnn hw estimate --run/--packed`` does
    (:func:`hbnn.train.rebuild.model_from_checkpoint`, :func:`hbnn.export.model_from_packed`).
    """
    return estimate_layers(profile_model(model, input_shape), **kwargs)


def _compare_row(row: Any, catalog: Catalog) -> dict[str, Any]:
    platform, workload = catalog.platform(row.platform), catalog.workload(row.model)
    layers = workload_layers(workload.layers, row.bits)
    paper = scale(
        platform, row.bits, unfolding=row.unfolding, op_ratio=workload.op_ratio, fpga_occupancy=workload.fpga_occupancy
    )
    flow = dataflow_estimate(platform, layers, lut_budget=paper.occupancy)
    need = luts_for_kfps(layers, platform.dataflow, platform.clock_mhz, paper.kfps)
    return {
        "row": row.row,
        "model": workload.label,
        "bits": row.bits,
        "unfolding": row.unfolding,
        "macs_ratio": sum(layer.macs for layer in layers) / platform.baseline.macs,
        "paper_op_ratio": workload.op_ratio,
        "scaling": {"occupancy": paper.occupancy, "kfps": paper.kfps, "watts": paper.watts},
        "dataflow": {"occupancy": flow.occupancy, "kfps": flow.kfps, "watts": flow.watts, "bottleneck": flow.bottleneck},
        "kfps_ratio": flow.kfps / paper.kfps,
        "occupancy_for_scaling_kfps": None if need is None else need / platform.device_luts,
    }


def compare_table2(catalog: Catalog | None = None) -> list[dict[str, Any]]:
    """Dataflow vs paper scaling on Table 2's FPGA rows, at the scaling model's LUT budget.

    For each FPGA row: the paper rule's occupancy/kFPS/W, the dataflow model's kFPS and
    W when given the same LUTs, their kFPS ratio, and the occupancy the dataflow model
    needs to match the paper rule's kFPS (None when no folding reaches it).
    """
    from hbnn.hw.table2 import paper_table2

    catalog = catalog or load_catalog()
    fpga_rows = [r for r in paper_table2() if catalog.platform(r.platform).kind == "fpga"]
    return [_compare_row(row, catalog) for row in fpga_rows]
