"""The kill harness in CI (``scripts/kill_resume.py``): three SIGKILLed runs (at startup, at an
event up to the first checkpoint, at any event) all actually killed, resume bit-identical to an
uninterrupted run and leave no temporary file."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_three_kills_resume_bit_identical_without_leftovers(tmp_path, fmnist_dir, load_script):
    kills = load_script("kill_resume")
    summary = kills.run_kills(3, seed=0, data_dir=fmnist_dir, work=tmp_path / "kill")
    assert "error" not in summary, summary.get("error")
    assert [t["plan"] for t in summary["trials"]] == ["startup", "early_event", "event"]
    assert summary["killed"] == 3, json.dumps(summary["trials"], indent=1)[:4000]
    assert summary["killed_before_or_during_first_checkpoint"] >= 1
    assert sum(summary["kills_by_phase"].values()) == 3
    assert summary["failures"] == [], json.dumps(summary["failures"], indent=1)[:4000]
    assert summary["bit_identical"] == 3 and summary["leftover_tmp"] == 0


def test_plans_are_deterministic_and_early_enough(load_script):
    kills = load_script("kill_resume")
    events = [(n, 1, 0.1 * k) for k, n in enumerate(["run.json", "config.yaml", "metrics.csv", "best.safetensors",
                                                       "best.json", "last.safetensors", "last.json"])]
    events += [(n, 2, 1 + 0.1 * k) for k, n in enumerate(["last.safetensors", "last.json"])]
    ref = {"events": events, "t_first": 0.1, "t_end": 2.0}
    plans = [kills.plan_trial(i, 0, ref) for i in range(40)]
    assert plans == [kills.plan_trial(i, 0, ref) for i in range(40)]
    early = [p for p in plans if p["plan"] in ("startup", "early_event")]
    assert len(early) == 20 and all(p.get("index", 0) <= 6 for p in early)
