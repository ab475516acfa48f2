"""``python -m benchmarks.bench_train`` runs and reports every ratio (no speed asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_train_prints_json_with_ratios_and_selection_share(tmp_path, child_env):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_train", "--batch-size", "4", "--rounds", "1",
                           "--steps", "1", "--warmup", "1", "--image-size", "16", "--threads", "1",
                           "--out", str(out)], cwd=REPO, env=child_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert json.loads(out.read_text()) == result
    assert set(result["step_ms_median"]) == {"float", "w1.4", "w1.4a1.4", "w1.4a1.4_sampled"}
    assert set(result["ratios"]) == {"w1.4_vs_float", "w1.4a1.4_vs_float", "w1.4a1.4_sampled_vs_float"}
    for name, calls in (("w1.4", 2), ("w1.4a1.4", 4)):  # 2 binarized convs; + their 2 act quantizers
        share = result["bitmap_selection"][name]
        assert share["calls_per_step"] == calls and 0 < share["share"] < 1
    assert result["threads"] == 1 and result["input"] == [4, 3, 16, 16]
