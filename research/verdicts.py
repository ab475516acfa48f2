"""The issue's five claim checks, computed from result files only.

Rule (one for every claim). Each claim is a statement ``v <= b`` or ``v > b`` about a
linear combination ``v = sum_i c_i m_i`` of point means ``m_i`` (top-1, percentage points)
with standard error ``se = sqrt(sum_i c_i^2 s_i^2 / n_i)`` (``s_i`` the seed standard
deviation, ``n_i`` the seeds). With ``K = 2``:

* **held** when the whole interval ``v +- K se`` is on the claimed side of ``b``;
* **did not hold** when it is entirely on the other side;
* **inconclusive (seed spread)** when it straddles ``b``;
* **inconclusive (fewer than 2 seeds)** when a point has a single seed (no spread estimate);
* **not run** when the needed points are missing.

The claims (points found by their spec, not their names):

(i) middle-out is the best heuristic at 1.4 bits (fig2b): ``m_MO - m_h > 0`` for every
    other heuristic ``h``; held if all hold, did not hold if any other heuristic is
    better by the rule, else inconclusive.
(ii) 1.4-bit is within 0.3 points of 2-bit (fig2b, weights only): ``m_2 - m_1.4 <= 0.3``.
(iii) 1.4 bits recovers >= 70% of the 1->2-bit gap (fig3b): ``m_1.4 - m_1 - 0.7 (m_2 - m_1) > 0``;
    and layer-level mixing is roughly linear (fig3a): over layer-level points with a realized
    average ``x`` strictly between 1 and 2, the mean of ``|(m - m_1)/(m_2 - m_1) - (x - 1)|``
    is at most :data:`LINEAR_TOLERANCE` (needs a 1->2 gap that is itself positive by the rule).
    Held if both parts hold, did not hold if either does not, else inconclusive.
(iv) the mix barely matters (mix): ``max m - min m <= 0.5`` over the 1.4-bit mixes (se of
    the two extreme points).
(v) 1.4/1.4 beats 2/2 (table1): ``m_{1.4/1.4} - m_{2/2} > 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from hbnn.experiments.results import read_results
from research.stats import PointStats, aggregate

__all__ = ["K", "LINEAR_TOLERANCE", "Verdict", "verdicts", "verdicts_from_dir", "verdicts_markdown", "check", "combine", "as_mix"]

K = 2.0
LINEAR_TOLERANCE = 0.25
HELD, FAILED, SPREAD, FEW, NOT_RUN = ("held", "did not hold", "inconclusive (seed spread)",
                                      "inconclusive (fewer than 2 seeds)", "not run")
CLAIMS = {
    "i": "middle-out is the best heuristic at 1.4 bits",
    "ii": "1.4-bit HBNN is within 0.3 points of homogeneous 2-bit",
    "iii": "1.4 bits recovers >= 70% of the 1->2-bit gap, layer-level mixing only roughly linear",
    "iv": "the mix barely matters at 1.4 bits (<= 0.5 points)",
    "v": "1.4/1.4 (act/weight) beats 2/2",
}


@dataclass
class Verdict:
    """One claim's outcome: ``status`` and the numbers behind it."""

    claim: str
    text: str
    status: str
    detail: str
    numbers: dict = field(default_factory=dict)


def check(value: float, se: float | None, bound: float, claim_le: bool) -> str:
    """Apply the rule to ``value`` (``se`` None = a single seed somewhere) against ``bound``.

    Args:
        claim_le: True for a ``value <= bound`` claim, False for ``value > bound``.
    """
    if se is None:
        return FEW
    lo, hi = value - K * se, value + K * se
    if claim_le:
        return HELD if hi <= bound else FAILED if lo > bound else SPREAD
    return HELD if lo > bound else FAILED if hi < bound else SPREAD


def combine(terms: Sequence[tuple[float, PointStats]]) -> tuple[float, float | None]:
    value = sum(c * s.mean for c, s in terms)
    if any(s.se is None for _, s in terms):
        return value, None
    return value, math.sqrt(sum((c * s.se) ** 2 for c, s in terms))


def as_mix(value: Any):
    from hbnn.quant import BitMix

    if value is None:
        return None
    try:
        return BitMix.coerce(value)
    except (TypeError, ValueError):
        return None


def _find(stats: Iterable[PointStats], weight: Any, act: Any = None, heuristic: str | None = "middle_out",
          layer: bool = False) -> list[PointStats]:
    """Points with this weight mix (an average matches its paper mix), act mix, heuristic."""
    want_w, want_a = as_mix(weight), as_mix(act)
    out = []
    for s in stats:
        spec = s.spec
        if ("layer_bits" in spec) != layer or int(spec.get("block", 1)) != 1:
            continue
        if not layer and as_mix(spec.get("weight")) != want_w:
            continue
        if as_mix(spec.get("act")) != want_a:
            continue
        if heuristic is not None and spec.get("heuristic", "middle_out") != heuristic:
            continue
        out.append(s)
    return out


def _one(stats: Iterable[PointStats], *args: Any, **kwargs: Any) -> PointStats | None:
    found = _find(stats, *args, **kwargs)
    return found[0] if found else None


def _fmt(s: PointStats) -> str:
    std = "" if s.std is None else f" ± {s.std:.2f}"
    return f"{s.label} {s.mean:.2f}{std} (n={s.n})"


def _claim_i(fig2b: list[PointStats]) -> Verdict:
    mo = _one(fig2b, 1.4)
    others = [s for h in ("bottom_up", "top_down", "random") for s in _find(fig2b, 1.4, heuristic=h)]
    if mo is None or not others:
        return Verdict("i", CLAIMS["i"], NOT_RUN, "needs fig2b's 1.4-bit points for middle-out and another heuristic")
    results = [(s, *combine([(1, mo), (-1, s)])) for s in others]
    states = [check(v, se, 0.0, claim_le=False) for _, v, se in results]
    status = (FAILED if FAILED in states else HELD if all(x == HELD for x in states)
              else FEW if FEW in states else SPREAD)
    parts = [f"MO - {s.label} = {v:+.2f}" + ("" if se is None else f" ± {K * se:.2f}") for s, v, se in results]
    detail = f"{_fmt(mo)}; " + "; ".join(_fmt(s) for s in others) + "; " + ", ".join(parts)
    return Verdict("i", CLAIMS["i"], status, detail, {"mo": mo.mean, **{s.label: s.mean for s in others}})


def _claim_ii(fig2b: list[PointStats]) -> Verdict:
    mo, two = _one(fig2b, 1.4), _one(fig2b, 2, heuristic=None)
    if mo is None or two is None:
        return Verdict("ii", CLAIMS["ii"], NOT_RUN, "needs fig2b's 1.4-bit middle-out and 2-bit points")
    gap, se = combine([(1, two), (-1, mo)])
    detail = f"{_fmt(two)}; {_fmt(mo)}; 2-bit - 1.4-bit = {gap:+.2f}" + ("" if se is None else f" ± {K * se:.2f}")
    return Verdict("ii", CLAIMS["ii"], check(gap, se, 0.3, claim_le=True), detail, {"gap": gap, "se": se})


def _linear_part(layer_pts: list[PointStats], one: PointStats, two: PointStats) -> tuple[str, str, float | None]:
    gap, se = combine([(1, two), (-1, one)])
    inner = [s for s in layer_pts if s.weight_bits is not None and 1 + 1e-6 < s.weight_bits < 2 - 1e-6]
    if not inner:
        return NOT_RUN, "no layer-level point between 1 and 2 bits (fig3a)", None
    if check(gap, se, 0.0, claim_le=False) != HELD:
        return SPREAD, f"1->2-bit gap {gap:+.2f} not clearly positive", None
    devs = [abs((s.mean - one.mean) / gap - (s.weight_bits - 1)) for s in inner]
    dev = sum(devs) / len(devs)
    status = HELD if dev <= LINEAR_TOLERANCE else FAILED
    return status, f"layer-level mean |recovery - linear| = {dev:.2f} over {len(inner)} points", dev


def _claim_iii(fig3b: list[PointStats], fig3a: list[PointStats]) -> Verdict:
    one, mid, two = _one(fig3b, 1, heuristic=None), _one(fig3b, 1.4), _one(fig3b, 2, heuristic=None)
    if one is None or mid is None or two is None:
        return Verdict("iii", CLAIMS["iii"], NOT_RUN, "needs fig3b's 1.0, 1.4 and 2.0-bit points")
    value, se = combine([(1, mid), (-0.3, one), (-0.7, two)])
    part_a = check(value, se, 0.0, claim_le=False)
    gap = two.mean - one.mean
    recovery = (mid.mean - one.mean) / gap if gap else math.nan
    part_b, text_b, dev = _linear_part(_find(fig3a, None, heuristic=None, layer=True), one, two)
    states = (part_a, part_b)
    if FAILED in states:
        status = FAILED
    elif states == (HELD, HELD):
        status = HELD
    elif part_a == FEW:
        status = FEW
    else:
        status = SPREAD if SPREAD in states else NOT_RUN
    detail = (f"{_fmt(one)}; {_fmt(mid)}; {_fmt(two)}; recovery at 1.4 = {recovery:.0%} "
              f"(1.4 - (1 + 0.7 gap) = {value:+.2f}" + ("" if se is None else f" ± {K * se:.2f}") +
              f": {part_a}); {text_b} (linear: {part_b})")
    return Verdict("iii", CLAIMS["iii"], status, detail,
                   {"recovery": recovery, "excess": value, "se": se, "layer_deviation": dev})


def _claim_iv(mix: list[PointStats]) -> Verdict:
    pts = [s for s in mix if as_mix(s.spec.get("weight")) is not None and abs(as_mix(s.spec["weight"]).average - 1.4) < 1e-9]
    if len(pts) < 2:
        return Verdict("iv", CLAIMS["iv"], NOT_RUN, "needs at least two 1.4-bit mixes (mix)")
    hi, lo = max(pts, key=lambda s: s.mean), min(pts, key=lambda s: s.mean)
    spread, se = combine([(1, hi), (-1, lo)])
    detail = "; ".join(_fmt(s) for s in pts) + f"; spread = {spread:.2f}" + ("" if se is None else f" ± {K * se:.2f}")
    return Verdict("iv", CLAIMS["iv"], check(spread, se, 0.5, claim_le=True), detail, {"spread": spread, "se": se})


def _claim_v(table1: list[PointStats]) -> Verdict:
    het, two = _one(table1, 1.4, act=1.4), _one(table1, 2, act=2, heuristic=None)
    if het is None or two is None:
        return Verdict("v", CLAIMS["v"], NOT_RUN, "needs table1's 1.4/1.4 and 2/2 rows")
    diff, se = combine([(1, het), (-1, two)])
    detail = f"{_fmt(het)}; {_fmt(two)}; difference {diff:+.2f}" + ("" if se is None else f" ± {K * se:.2f}")
    return Verdict("v", CLAIMS["v"], check(diff, se, 0.0, claim_le=False), detail, {"diff": diff, "se": se})


def verdicts(results: Mapping[str, list[Mapping[str, Any]]]) -> list[Verdict]:
    """The five verdicts from result lines keyed by experiment (fig2b, fig3b, fig3a, mix, table1)."""
    stats = {name: aggregate(results.get(name, [])) for name in ("fig2b", "fig3b", "fig3a", "mix", "table1")}
    return [_claim_i(stats["fig2b"]), _claim_ii(stats["fig2b"]), _claim_iii(stats["fig3b"], stats["fig3a"]),
            _claim_iv(stats["mix"]), _claim_v(stats["table1"])]


def verdicts_from_dir(folder: str | Path, prefix: str = "") -> list[Verdict]:
    """:func:`verdicts` on ``<folder>/<prefix><experiment>.jsonl`` files (missing files = not run)."""
    folder = Path(folder)
    names = ("fig2b", "fig3b", "fig3a", "mix", "table1")
    return verdicts({name: read_results(folder / f"{prefix}{name}.jsonl") for name in names})


def verdicts_markdown(items: Iterable[Verdict]) -> str:
    """The verdicts as a markdown table (claim, verdict, numbers)."""
    rows = ["| claim | verdict | numbers (top-1 %, mean ± std over seeds; ± 2 se on differences) |",
            "|---|---|---|"]
    for v in items:
        rows.append(f"| ({v.claim}) {v.text} | **{v.status}** | {v.detail} |")
    return "\n".join(rows) + f"\n\nRule: held / did not hold when the ±{K:g} standard-error interval lies entirely on one side of the claim's bound (see research.verdicts)."
