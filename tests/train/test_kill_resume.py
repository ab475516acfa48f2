"""The kill harness in CI (``scripts/kill_resume.py``): SIGKILLed runs, one before its first
checkpoint, resume bit-identical to an uninterrupted run and leave no temporary file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _kill_module():
    spec = importlib.util.spec_from_file_location("hbnn_kill_resume", REPO / "scripts" / "kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_three_kills_resume_bit_identical_without_leftovers(tmp_path, fmnist_dir):
    kills = _kill_module()
    summary = kills.run_kills(3, seed=0, data_dir=fmnist_dir, work=tmp_path / "kill")
    assert "error" not in summary, summary.get("error")
    assert [t["strategy"] for t in summary["trials"]][::2] == ["startup", "config_write"]
    assert summary["killed"] >= 2
    assert summary["before_or_during_first_checkpoint"] >= 1
    assert summary["failures"] == [], json.dumps(summary["failures"], indent=1)[:4000]
    assert summary["bit_identical"] == 3 and summary["leftover_tmp"] == 0
