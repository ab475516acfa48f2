"""The five claim checks on synthetic result lines: held, did not hold, inconclusive, not run."""

from __future__ import annotations

import pytest

from research.stats import aggregate
from research.verdicts import FAILED, FEW, HELD, NOT_RUN, SPREAD, check, verdicts, verdicts_from_dir

TIGHT = (-0.001, 0.0, 0.001)  # seed offsets (fractions): std 0.1 points
WIDE = (-0.02, 0.0, 0.02)     # std 2 points


def seeds(mean: float, spread=TIGHT) -> list[float]:
    return [mean + d for d in spread]


def fig2b(make_lines, mo=0.80, others=0.75, two=0.80, one=0.70, spread=TIGHT):
    return make_lines("fig2b", {
        "w1": ({"weight": 1}, seeds(one, spread)),
        "w2": ({"weight": 2}, seeds(two, spread)),
        "w1.4_mo": ({"weight": 1.4, "heuristic": "middle_out"}, seeds(mo, spread)),
        "w1.4_bu": ({"weight": 1.4, "heuristic": "bottom_up"}, seeds(others, spread)),
        "w1.4_random": ({"weight": 1.4, "heuristic": "random"}, seeds(others, spread)),
    })


def by_claim(results: dict) -> dict:
    return {v.claim: v for v in verdicts(results)}


def test_rule():
    assert check(1.0, 0.1, 0.0, claim_le=False) == HELD
    assert check(-1.0, 0.1, 0.0, claim_le=False) == FAILED
    assert check(0.1, 0.1, 0.0, claim_le=False) == SPREAD
    assert check(0.1, None, 0.0, claim_le=False) == FEW
    assert check(0.1, 0.05, 0.3, claim_le=True) == HELD     # 0.1 + 2 * 0.05 <= 0.3
    assert check(0.5, 0.05, 0.3, claim_le=True) == FAILED
    assert check(0.25, 0.05, 0.3, claim_le=True) == SPREAD


def test_claims_i_and_ii(make_lines):
    v = by_claim({"fig2b": fig2b(make_lines)})
    assert v["i"].status == HELD and "MO - w1.4_bu = +5.00" in v["i"].detail
    assert v["ii"].status == HELD and v["ii"].numbers["gap"] == pytest.approx(0.0, abs=1e-9)
    v = by_claim({"fig2b": fig2b(make_lines, mo=0.75, others=0.80, two=0.81)})
    assert v["i"].status == FAILED and v["ii"].status == FAILED
    v = by_claim({"fig2b": fig2b(make_lines, mo=0.801, others=0.80, spread=WIDE)})
    assert v["i"].status == SPREAD and v["ii"].status == SPREAD


def test_single_seed_is_inconclusive(make_lines):
    lines = [x for x in fig2b(make_lines) if x["seed"] == 0]
    v = by_claim({"fig2b": lines})
    assert v["i"].status == FEW and v["ii"].status == FEW


def fig3(make_lines, mid: float, layer_excess: float = 0.0):
    """fig3b: 70 / mid / 80 % at 1.0 / 1.4 / 2.0 bits; fig3a: two layer-level points that sit
    ``layer_excess`` (a fraction of the 1->2 gap) above the straight line."""
    fig3b = make_lines("fig3b", {"w1.0": ({"weight": 1}, seeds(0.70)), "w1.4": ({"weight": 1.4}, seeds(mid)),
                                 "w2.0": ({"weight": 2}, seeds(0.80))})
    layer = {f"layer{x}": ({"layer_bits": x, "_bits": x + 0.01}, [0.70 + (x + 0.01 - 1 + layer_excess) * 0.10])
             for x in (1.3, 1.6)}
    return {"fig3b": fig3b, "fig3a": make_lines("fig3a", layer)}


def test_claim_iii(make_lines):
    v = by_claim(fig3(make_lines, mid=0.79))  # recovers 90%; layer-level exactly linear
    assert v["iii"].status == HELD and v["iii"].numbers["recovery"] == pytest.approx(0.9)
    assert v["iii"].numbers["layer_deviation"] == pytest.approx(0.0, abs=1e-9)
    assert by_claim(fig3(make_lines, mid=0.74))["iii"].status == FAILED  # recovers only 40%
    v = by_claim(fig3(make_lines, mid=0.79, layer_excess=0.3))  # layer-level superlinear too
    assert v["iii"].status == FAILED and v["iii"].numbers["layer_deviation"] == pytest.approx(0.3)
    assert by_claim({"fig3b": fig3(make_lines, 0.79)["fig3b"]})["iii"].status == NOT_RUN


def test_claim_iv(make_lines):
    def mix(values):
        names = ("70-20-10", "80-0-20", "60-40-0")
        points = {name: ({"weight": name.replace("-", "/")}, seeds(v)) for name, v in zip(names, values)}
        return {"mix": make_lines("mix", points)}
    assert by_claim(mix([0.800, 0.801, 0.799]))["iv"].status == HELD
    assert by_claim(mix([0.800, 0.790, 0.800]))["iv"].status == FAILED
    assert by_claim(mix([0.800, 0.796, 0.800]))["iv"].status == SPREAD


def test_claim_v(make_lines):
    def table(het, two):
        return {"table1": make_lines("table1", {"w2a2": ({"weight": 2, "act": 2}, seeds(two)),
                                                "w1.4a1.4": ({"weight": 1.4, "act": 1.4}, seeds(het)),
                                                "fp": ({}, seeds(0.9))})}
    assert by_claim(table(0.80, 0.78))["v"].status == HELD
    assert by_claim(table(0.78, 0.80))["v"].status == FAILED
    assert by_claim(table(0.8005, 0.80))["v"].status == SPREAD


def test_nothing_run(tmp_path):
    assert {v.status for v in verdicts_from_dir(tmp_path)} == {NOT_RUN}


def test_aggregate_statistics(make_lines):
    stats = aggregate(make_lines("x", {"p": ({"weight": 2}, [0.5, 0.6, 0.7])}))
    (s,) = stats
    assert s.n == 3 and s.mean == pytest.approx(60.0) and s.std == pytest.approx(10.0)
    assert s.se == pytest.approx(10.0 / 3 ** 0.5) and s.weight_bits == 2.0
