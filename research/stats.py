"""Aggregation of result lines over seeds, and the markdown tables docs/results.md embeds.

Per point: ``n`` seeds, the mean, the sample standard deviation (``ddof=1``; None for one
seed) and the standard error ``std / sqrt(n)``, of the final test top-1 (percent). The
last line of each run wins (:func:`hbnn.experiments.results.latest`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from hbnn.experiments.results import latest

__all__ = ["PointStats", "aggregate", "mean_std", "format_bits", "markdown_table", "gaps_markdown",
           "fig2a_markdown"]


@dataclass
class PointStats:
    """One point's accuracy over its seeds (percent) and its realized bits.

    Attributes:
        point: point name.
        label: plot label.
        spec: the point's spec (from the result lines).
        seeds: the seeds found.
        values: top-1 per seed, percent.
        mean, std, se: of ``values`` (std and se None for a single seed).
        top5: mean top-5, percent.
        weight_bits, act_bits: mean realized averages (32 = float).
        paper: the paper's number for this row, if any.
    """

    point: str
    label: str
    spec: dict
    seeds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    mean: float = math.nan
    std: float | None = None
    se: float | None = None
    top5: float | None = None
    weight_bits: float | None = None
    act_bits: float | None = None
    paper: float | None = None

    @property
    def n(self) -> int:
        """Number of seeds."""
        return len(self.values)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return math.nan, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def aggregate(lines: Iterable[Mapping[str, Any]], metric: str = "top1") -> list[PointStats]:
    """Group training lines by point (first-appearance order) and summarise over seeds."""
    groups: dict[str, list[dict]] = {}
    for line in latest(lines):
        if line.get("kind", "train") == "train" and line.get(metric) is not None:
            groups.setdefault(line["point"], []).append(line)
    out = []
    for point, rows in groups.items():
        rows.sort(key=lambda r: r["seed"])
        spec = dict(rows[-1].get("spec") or {})
        values = [100.0 * float(r[metric]) for r in rows]
        mean, std = mean_std(values)
        out.append(PointStats(
            point=point, label=str(spec.get("label", point)), spec=spec, seeds=[r["seed"] for r in rows],
            values=values, mean=mean, std=std, se=None if std is None else std / math.sqrt(len(values)),
            top5=_mean(100.0 * r["top5"] for r in rows if r.get("top5") is not None),
            weight_bits=_mean(r.get("weight_bits") for r in rows), act_bits=_mean(r.get("act_bits") for r in rows),
            paper=spec.get("paper")))
    return out


def format_bits(bits: float | None) -> str:
    """``"FP"`` for 32 (float), else the realized average with up to 3 decimals."""
    if bits is None:
        return "?"
    return "FP" if bits >= 32 else f"{bits:.3f}".rstrip("0").rstrip(".")


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def markdown_table(stats: Iterable[PointStats]) -> str:
    """The aggregated table: point, realized bits, top-1 mean ± std, top-5, n, paper."""
    head = ("| point | weight bits | act bits | top-1 % (mean ± std) | top-5 % | n | paper top-1 % |\n"
            "|---|---|---|---|---|---|---|")
    rows = [head]
    for s in stats:
        top5 = "" if s.top5 is None else f"{s.top5:.2f}"
        paper = "" if s.paper is None else f"{s.paper:g}"
        rows.append(f"| {s.label} | {format_bits(s.weight_bits)} | {format_bits(s.act_bits)} | "
                    f"{_pm(s.mean, s.std)} | {top5} | {s.n} | {paper} |")
    return "\n".join(rows)


def _ratio(value: float, unit: float) -> str:
    return "inf" if unit == 0 else f"{value / unit:+.1f}"


def gaps_markdown(stats: list[PointStats]) -> str:
    """Pairwise gaps between points, in points and in seed standard deviations (the pilot's question).

    ``A - B`` with the pooled seed std ``sqrt((s_A^2 + s_B^2) / 2)`` and the standard error
    ``sqrt(s_A^2 / n_A + s_B^2 / n_B)`` of the difference; blank without two seeds on both sides.
    """
    rows = ["| A | B | A - B (points) | / seed std | / se |", "|---|---|---|---|---|"]
    for i, a in enumerate(stats):
        for b in stats[i + 1:]:
            diff = a.mean - b.mean
            if a.std is None or b.std is None:
                rows.append(f"| {a.label} | {b.label} | {diff:+.2f} | | |")
                continue
            pooled = math.sqrt((a.std ** 2 + b.std ** 2) / 2)
            se = math.sqrt(a.se ** 2 + b.se ** 2)
            rows.append(f"| {a.label} | {b.label} | {diff:+.2f} | {_ratio(diff, pooled)} | {_ratio(diff, se)} |")
    return "\n".join(rows)


def fig2a_markdown(lines: Iterable[Mapping[str, Any]]) -> str:
    """Fig. 2a as a table: rows = heuristics (and homogeneous), cells = ours (paper)."""
    rows: dict[str, dict[float, tuple[float, float | None]]] = {}
    for line in latest(lines):
        if line.get("kind") != "fig2a":
            continue
        rows.setdefault(line.get("heuristic") or "homogeneous", {})[float(line["avg_bits"])] = (
            line["error"], line.get("paper"))
    if not rows:
        return "(no fig2a lines)"
    cols = sorted({a for r in rows.values() for a in r})
    out = ["| heuristic \\ avg bits | " + " | ".join(f"{a:g}" for a in cols) + " |",
           "|---|" + "---|" * len(cols)]
    for name, cells in rows.items():
        vals = []
        for a in cols:
            if a not in cells:
                vals.append("")
                continue
            ours, paper = cells[a]
            vals.append(f"{ours:.3f}" + ("" if paper is None else f" ({paper:.2f})"))
        out.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n\nCells: normalized error ‖x − x̂‖ / ‖x‖, ours (paper, read off its plot)."
