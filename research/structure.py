"""The structure study: accuracy (``results/structure.jsonl``) against packed-engine latency and size
(``results/bench/structure.json``, :mod:`benchmarks.bench_structure`), as a Pareto figure and a table.

Join: the result lines give each point's top-1 over seeds (:func:`research.stats.aggregate`:
mean, sample std, se = std / sqrt(n)); the bench JSON gives, by point name, the packed
engine's median time (ms) on this machine, measured in one round-robin with PyTorch fp32,
and the stored bits per binarized weight.

Rule (stated, then applied per point ``P`` with binarized weights and a structured or
fractional map). References: W1A1 and W2A2 for points with binarized activations, W1 and W2
(weights only) for weights-only points; ``m`` are seed means in points.

* recovery ``r = (m_P - m_1) / (m_2 - m_1)`` (shown as a percentage);
* "keeps >= 70% of the recovery" is the statement ``v = m_P - 0.3 m_1 - 0.7 m_2 > 0`` judged as
  :mod:`research.verdicts` judges every claim (:func:`research.verdicts.check`, ``K = 2``):
  held when ``v - 2 se(v) > 0``, did not hold when ``v + 2 se(v) < 0``, else inconclusive
  (fewer than 2 seeds on a side: inconclusive too), with
  ``se(v)^2 = se_P^2 + 0.09 se_1^2 + 0.49 se_2^2``;
* faster: the packed engine's median AND its minimum time below the reference's (W2A2, or
  W2 for weights-only points) in the same bench run;
* smaller: fewer stored bits per binarized weight (planes + map + scales) than the reference.

Verdict: **yes** when the recovery held and the point is faster and smaller; **no** when the
recovery did not hold or the point is not faster or not smaller; **not run** when a reference
or the bench numbers are missing; otherwise **inconclusive**.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hbnn.errors import ConfigError
from research.stats import PointStats, aggregate
from research.verdicts import FAILED, HELD, K, NOT_RUN, combine, as_mix, check

__all__ = ["RECOVERY", "StructureRow", "load_structure", "structure_rows", "structure_markdown", "plot_structure",
           "verdict_rule"]

#: The recovery fraction a point must keep.
RECOVERY = 0.7
_MARKERS = {"entry": "o", "channel": "s", "block": "^"}


@dataclass
class StructureRow:
    """One point of the study: accuracy, latency, size and the verdict by the rule.

    Attributes:
        stats: top-1 over seeds (:class:`research.stats.PointStats`).
        bench: the bench JSON's row for the point (None: not benchmarked).
        role: ``fp``, ``w1a1``, ``w2a2``, ``w1``, ``w2`` (references) or ``point``.
        recovery: ``(m - m_1) / (m_2 - m_1)`` against the point's references (None: not a
            mixed point, or references missing).
        kept: the rule's status for ``recovery >= 0.7`` (``held``, ``did not hold``, ...).
        faster, smaller: against the reference (None: no bench numbers).
        verdict: ``yes``, ``no``, ``inconclusive``, ``not run``, or ``""`` for references.
    """

    stats: PointStats
    bench: dict | None
    role: str
    recovery: float | None = None
    kept: str = ""
    faster: bool | None = None
    smaller: bool | None = None
    verdict: str = ""

    @property
    def act(self) -> bool:
        """True when the point binarizes activations."""
        return self.stats.spec.get("act") is not None


def _role(spec: Mapping[str, Any]) -> str:
    weight, act = as_mix(spec.get("weight")), as_mix(spec.get("act"))
    if spec.get("weight") is None and spec.get("act") is None:
        return "fp"
    plain = spec.get("structure", "entry") == "entry" and "layer_bits" not in spec
    for bits in (1, 2):
        if plain and weight == as_mix(bits) and act in (None, as_mix(bits)):
            return f"w{bits}a{bits}" if act is not None else f"w{bits}"
    return "point"


def load_structure(results: str | Path, bench: str | Path) -> tuple[list[dict], dict]:
    """The result lines and the bench JSON.

    Raises:
        ConfigError: either file is missing, empty or not JSON (one line naming the command to run).
    """
    from hbnn.experiments.results import read_results

    results, bench = Path(results), Path(bench)
    if not results.is_file():
        raise ConfigError(f"results file {results} not found; run 'hbnn sweep structure' first or pass --results FILE")
    lines = read_results(results)
    if not lines:
        raise ConfigError(f"results file {results} has no lines; run 'hbnn sweep structure' first")
    if not bench.is_file():
        raise ConfigError(f"bench file {bench} not found; run 'python -m benchmarks.bench_structure' first "
                          "or pass --bench FILE")
    try:
        data = json.loads(bench.read_text(encoding="utf-8"))
        data["points"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"bench file {bench} is not a bench_structure JSON ({exc})") from None
    return lines, data


def _faster(row: dict, ref: dict) -> bool:
    return row["packed_ms"] < ref["packed_ms"] and row["packed_min_ms"] < ref["packed_min_ms"]


def _judge(row: StructureRow, refs: Mapping[str, StructureRow]) -> None:
    """Fill recovery, kept, faster, smaller and verdict of a mixed point, in place."""
    one, two = (refs.get("w1a1"), refs.get("w2a2")) if row.act else (refs.get("w1"), refs.get("w2"))
    if one is not None and two is not None:
        gap = two.stats.mean - one.stats.mean
        row.recovery = (row.stats.mean - one.stats.mean) / gap if gap else math.nan
        value, se = combine([(1, row.stats), (-(1 - RECOVERY), one.stats), (-RECOVERY, two.stats)])
        row.kept = check(value, se, 0.0, claim_le=False)
    else:
        row.kept = NOT_RUN
    if row.bench is not None and two is not None and two.bench is not None:
        row.faster = _faster(row.bench, two.bench)
        bits, ref_bits = row.bench.get("bits_per_binarized_weight"), two.bench.get("bits_per_binarized_weight")
        row.smaller = bits is not None and ref_bits is not None and bits < ref_bits
    if row.kept == FAILED or row.faster is False or row.smaller is False:
        row.verdict = "no"
    elif row.kept == NOT_RUN or row.faster is None:
        row.verdict = "not run"  # a reference (or its bench numbers) is missing
    elif row.kept == HELD and row.faster and row.smaller:
        row.verdict = "yes"
    else:
        row.verdict = "inconclusive"


def structure_rows(lines: list[Mapping[str, Any]], bench: Mapping[str, Any]) -> list[StructureRow]:
    """Every point of the result lines joined with its bench row, judged by the rule (references unjudged)."""
    by_point = {row["point"]: row for row in bench.get("points", [])}
    rows = [StructureRow(s, by_point.get(s.point), _role(s.spec)) for s in aggregate(lines)]
    refs = {r.role: r for r in rows if r.role != "point"}
    for row in rows:
        if row.role == "point":
            _judge(row, refs)
    return rows


def _maps(spec: Mapping[str, Any]) -> str:
    if spec.get("weight") is None:
        return "float"
    text = spec.get("structure", "entry") + (" error" if spec.get("allocate") == "error" else "")
    if spec.get("act") is not None:
        text += " + " + spec.get("act_structure", "entry")
    return text


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def verdict_rule() -> str:
    """The rule as one paragraph (printed under the table)."""
    return (f"Rule: recovery = (top1 - top1_W1A1) / (top1_W2A2 - top1_W1A1) (weights-only points: W1, W2); "
            f"'keeps >= {RECOVERY:.0%}' when top1 - {1 - RECOVERY:g} top1_1 - {RECOVERY:g} top1_2 > 0 with its "
            f"±{K:g} se interval entirely above 0 (research.verdicts); faster: packed median and minimum time "
            f"below the reference's (W2A2; weights-only: W2) in the same bench run; smaller: fewer stored bits per "
            f"binarized weight (planes + map + scales). yes = keeps, faster and smaller.")


def structure_markdown(results: str | Path, bench: str | Path) -> str:
    """The table (point, maps, top-1, recovery, time, bits, verdict) and the verdict paragraph."""
    lines, data = load_structure(results, bench)
    rows = structure_rows(lines, data)
    out = ["| point | maps (weights + acts) | top-1 % (mean ± std, n) | recovery | keeps ≥ 70% | packed ms "
           "| × fp32 | × ref | bits / bin. weight | faster & smaller | verdict |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, b = r.stats, r.bench or {}
        top1 = f"{s.mean:.2f}" + ("" if s.std is None else f" ± {s.std:.2f}") + f" ({s.n})"
        fs = "" if r.faster is None else f"{'yes' if r.faster else 'no'} / {'yes' if r.smaller else 'no'}"
        ms = (f"{data['fp32_ms']:.2f} (PyTorch fp32)" if r.role == "fp" and "fp32_ms" in data  # as in the figure
              else _cell(b.get("packed_ms"), ".2f"))
        out.append(f"| {s.label} | {_maps(s.spec)} | {top1} | {_cell(r.recovery, '.0%')} | {r.kept} | "
                   f"{ms} | {_cell(b.get('time_vs_fp32'), '.2f') if r.role != 'fp' else '1.00'} | "
                   f"{_cell(b.get('time_vs_ref'), '.2f')} | {_cell(b.get('bits_per_binarized_weight'), '.3f')} | "
                   f"{fs} | {('**' + r.verdict + '**') if r.verdict else ''} |")
    yes = [r.stats.label for r in rows if r.verdict == "yes"]
    out += ["", "**Verdict:** " + (f"{', '.join(yes)} keep{'s' if len(yes) == 1 else ''} at least 70% of the "
                                    "1-bit -> 2-bit recovery while being faster and smaller than the 2-bit reference."
                                    if yes else "no structure keeps at least 70% of the 1-bit -> 2-bit recovery while "
                                                "being faster and smaller than the 2-bit reference.")]
    quick = " (quick smoke run)" if data.get("quick") else ""
    weights = "/".join(data.get("weights", []))
    out += ["", verdict_rule(),
            f"Times: {data.get('cpu_model')}, {data.get('threads')} threads, {data.get('kernel_variant')} kernels, "
            f"input {data.get('input')} ({data.get('input_kind')}), medians of {data.get('reps')} round-robin reps"
            f"{quick}; fp32 NCHW {data.get('fp32_ms', math.nan):.2f} ms, channels-last "
            f"{data.get('fp32_channels_last_ms', math.nan):.2f} ms; model weights: {weights}."]
    return "\n".join(out)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both time (lower) and accuracy (higher), by time."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _style(spec: Mapping[str, Any]) -> tuple[str, str]:
    """``(marker, color)``: marker per weight structure, color per allocation."""
    kind = "".join(c for c in spec.get("structure", "entry") if c.isalpha())
    return _MARKERS.get(kind, "D"), "C3" if spec.get("allocate") == "error" else "C0"


def plot_structure(results: str | Path, bench: str | Path, out: str | Path) -> Path:
    """The Pareto figure: top-1 (mean ± std over seeds) against the packed engine's time (ms).

    Markers: weight structure (o entry, s channel, ^ block<K>); color: allocation (blue key,
    red error); filled with binarized activations, hollow for weights only. FP at the fp32
    (NCHW) time, fp32 channels-last as a dotted vertical line; W1A1 / W2A2 accuracies as
    dashed horizontal lines; the Pareto front over all points as a gray step line.
    """
    from research.plots import pyplot, save_png

    lines, data = load_structure(results, bench)
    rows = [r for r in structure_rows(lines, data) if r.bench is not None or r.role == "fp"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 5.0))
    drawn = []
    for r in rows:
        s = r.stats
        x = data["fp32_ms"] if r.role == "fp" else r.bench["packed_ms"]
        marker, color = ("*", "k") if r.role == "fp" else _style(s.spec)
        if r.role in ("w1a1", "w2a2", "w1", "w2"):
            color = "k"
        face = color if (r.act or r.role == "fp") else "none"
        ax.errorbar([x], [s.mean], yerr=[s.std or 0.0], fmt=marker, color=color, mfc=face, ms=8 if r.role == "fp"
                    else 6, capsize=3, lw=1)
        ax.annotate(s.label, (x, s.mean), textcoords="offset points", xytext=(4, 3), fontsize=6)
        drawn.append((x, s.mean))
    for role, style in (("w1a1", ":"), ("w2a2", "--")):
        ref = next((r for r in rows if r.role == role), None)
        if ref is not None:
            ax.axhline(ref.stats.mean, ls=style, color="gray", lw=0.8, label=f"{ref.stats.label}: {ref.stats.mean:.2f}%")
    ax.axvline(data["fp32_channels_last_ms"], ls=":", color="k", lw=0.8,
               label=f"fp32 channels-last: {data['fp32_channels_last_ms']:.2f} ms")
    front = _pareto(drawn)
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="gray", alpha=0.5, lw=1,
                label="Pareto front")
    for text, marker, face in (("entry", "o", "C0"), ("channel", "s", "C0"), ("block<K>", "^", "C0"),
                               ("error allocation", "o", "C3"), ("weights only (hollow)", "o", "none")):
        ax.plot([], [], marker, color="C3" if face == "C3" else "C0", mfc=face, ls="", label=text)
    quick = ", quick smoke run" if data.get("quick") else ""
    ax.set(xlabel=f"packed engine time per batch of {data['input'][0]} (ms, median; {data.get('cpu_model')}, "
                  f"{data.get('threads')} threads{quick})", ylabel="test top-1 (%), mean ± std over seeds",
           title="Structured bit maps: accuracy vs packed latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_png(fig, Path(out))
