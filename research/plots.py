"""Figures from result files only (matplotlib, imported lazily, Agg backend, atomic writes).

One function per figure style; :func:`plot_lines` picks it from the lines' ``figure`` key:

* ``fig2a`` -- approximation error vs average bits, one line per heuristic, the paper's
  values as hollow markers, homogeneous 1-4 bits in black;
* ``fig2b``, ``mix``, ``block``, ``pilot`` -- bars of top-1 mean ± std over seeds (seeds as
  dots); homogeneous weights-only points of fig2b become 1-bit / 2-bit reference lines;
* ``fig3a``, ``fig3b`` -- top-1 vs realized average weight bits, per-parameter and
  layer-level (both files when both exist), with 1-bit / 2-bit reference lines;
* ``table1`` -- the act/weight table as an image, plus ``table1.md``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable, Mapping

from hbnn.io import atomic_write_bytes, atomic_write_text
from research.stats import PointStats, aggregate, format_bits, markdown_table

__all__ = ["plot_lines", "plot_fig2a", "plot_bars", "plot_curve", "plot_table", "BAR_FIGURES", "pyplot", "save_png"]

BAR_FIGURES = ("fig2b", "mix", "block", "pilot")
_COLORS = {"middle_out": "C0", "bottom_up": "C1", "top_down": "C2", "random": "C3"}


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG atomically, close it, and return ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_fig2a(lines: Iterable[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Error vs average bits per heuristic (ours: lines; paper: hollow markers)."""
    from hbnn.experiments.results import latest

    plt = pyplot()
    series: dict[str, list[tuple[float, float, float | None]]] = {}
    for line in latest(lines):
        if line.get("kind") == "fig2a":
            key = line.get("heuristic") or "homogeneous"
            series.setdefault(key, []).append((float(line["avg_bits"]), line["error"], line.get("paper")))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, pts in series.items():
        pts.sort()
        color = _COLORS.get(key, "k")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, color=color, label=f"{key} (ours)")
        paper = [(p[0], p[2]) for p in pts if p[2] is not None]
        if paper:
            ax.plot(*zip(*paper), "o", mfc="none", ms=7, color=color, alpha=0.8)
    ax.plot([], [], "o", mfc="none", color="gray", label="paper (hollow)")
    ax.set(xlabel="average bits", ylabel="||x - x_hat|| / ||x||", title=title or "Fig. 2a: N(0,1) approximation error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _is_ref(s: PointStats) -> bool:
    """A homogeneous weights-only point (drawn as a reference line in fig2b)."""
    w = s.spec.get("weight")
    return s.spec.get("act") is None and isinstance(w, (int, float)) and float(w).is_integer()


def plot_bars(stats: list[PointStats], path: Path, title: str, refs: bool = False) -> Path:
    """Bars of mean ± std per point (seed values as dots); ``refs``: homogeneous points as lines."""
    plt = pyplot()
    ref_pts = [s for s in stats if refs and _is_ref(s)]
    bars = [s for s in stats if s not in ref_pts]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(bars) + 2), 4.2))
    xs = range(len(bars))
    ax.bar(xs, [s.mean for s in bars], yerr=[s.std or 0.0 for s in bars], capsize=4, color="C0", alpha=0.7)
    for x, s in zip(xs, bars):
        ax.plot([x] * s.n, s.values, "k.", ms=4)
    for i, s in enumerate(ref_pts):
        ax.axhline(s.mean, ls="--", color=f"C{i + 1}", label=f"{s.label}: {s.mean:.2f}%")
    ax.set_xticks(list(xs), [s.label for s in bars], rotation=20)
    values = [v for s in stats for v in s.values]
    if values:
        lo, hi = min(values), max(values)
        pad = max(0.5, 0.15 * (hi - lo))
        ax.set_ylim(lo - pad, hi + pad)
    ax.set(ylabel="test top-1 (%)", title=title)
    ax.grid(axis="y", alpha=0.3)
    if ref_pts:
        ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_curve(per_param: list[PointStats], layer: list[PointStats], path: Path, title: str) -> Path:
    """Top-1 vs realized average weight bits: per-parameter vs layer-level mixing."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for pts, name, style in ((per_param, "per-parameter (HBNN, middle-out)", "-o"),
                             (layer, "layer-level (whole layers at 1/2/3 bits)", "--s")):
        pts = sorted((s for s in pts if s.weight_bits is not None), key=lambda s: s.weight_bits)
        if pts:
            ax.errorbar([s.weight_bits for s in pts], [s.mean for s in pts], yerr=[s.std or 0.0 for s in pts],
                        fmt=style, ms=4, capsize=3, label=name)
    for bits, color in ((1, "C3"), (2, "C2")):
        ref = [s for s in per_param + layer if s.weight_bits is not None and abs(s.weight_bits - bits) < 1e-9]
        if ref:
            ax.axhline(ref[0].mean, ls=":", color=color, label=f"{bits}-bit: {ref[0].mean:.2f}%")
    ax.set(xlabel="average weight bits (realized)", ylabel="test top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_table(stats: list[PointStats], path: Path, title: str) -> Path:
    """Table 1 as an image (act/weight bits, top-1 mean ± std, n, paper)."""
    plt = pyplot()
    cols = ["row (act/weight)", "act bits", "weight bits", "top-1 % (mean ± std)", "seeds", "paper top-1 %"]
    cells = [[s.label, format_bits(s.act_bits), format_bits(s.weight_bits),
              f"{s.mean:.2f}" + ("" if s.std is None else f" ± {s.std:.2f}"), str(s.n),
              "" if s.paper is None else f"{s.paper:g}"] for s in stats]
    fig, ax = plt.subplots(figsize=(8.5, 0.4 * len(cells) + 1.0))
    ax.axis("off")
    table = ax.table(cellText=cells or [[""] * len(cols)], colLabels=cols, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(list(range(len(cols))))
    table.scale(1.0, 1.3)
    ax.set_title(title)
    return save_png(fig, path)


def _companion(results: Path, figure: str) -> Path | None:
    other = {"fig3a": "fig3b", "fig3b": "fig3a"}.get(figure)
    if other is None or figure not in results.name:
        return None
    path = results.with_name(results.name.replace(figure, other))
    return path if path.exists() else None


def plot_lines(lines: list[Mapping[str, Any]], out_dir: str | Path, name: str, results: Path | None = None) -> list[Path]:
    """Draw the figure(s) of one experiment's result lines into ``out_dir``.

    Args:
        lines: the experiment's result lines.
        out_dir: output folder (created).
        name: experiment name (file stem of the outputs).
        results: the results file (to find the fig3a/fig3b companion next to it).

    Returns:
        The files written.

    Raises:
        ValueError: no lines, or lines of an unknown figure style.
    """
    from hbnn.experiments.results import read_results

    if not lines:
        raise ValueError(f"plot {name}: the results file has no lines; run 'hbnn sweep {name}' first")
    out_dir = Path(out_dir)
    figure = lines[-1].get("figure", name)
    desc = f"{name} ({figure})" if figure != name else name
    png = out_dir / f"{name}.png"
    if figure == "fig2a":
        return [plot_fig2a(lines, png)]
    stats = aggregate(lines)
    if figure in BAR_FIGURES:
        return [plot_bars(stats, png, f"{desc}: test top-1, mean ± std over seeds", refs=figure == "fig2b")]
    if figure in ("fig3a", "fig3b"):
        other = _companion(results, figure) if results is not None else None
        both = stats + (aggregate(read_results(other)) if other else [])
        layer = [s for s in both if "layer_bits" in s.spec]
        per_param = [s for s in both if "layer_bits" not in s.spec]
        return [plot_curve(per_param, layer, png, f"{desc}: accuracy vs average weight bits")]
    if figure == "table1":
        md = out_dir / f"{name}.md"
        atomic_write_text(md, markdown_table(stats) + "\n")
        return [plot_table(stats, png, f"{desc}: act/weight bits"), md]
    raise ValueError(f"plot {name}: unknown figure style {figure!r}")
