"""``python -m benchmarks.bench_infer``: the whole-net benchmark's JSON (smoke settings; no speed asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_infer import main


def test_bench_infer_quick_prints_json(capsys):
    assert main(["--quick", "--cases", "W1A1", "--batch", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    case = result["cases"][0]
    assert case["config"] == "W1A1" and case["mismatches"] == 0 and case["packed_ms"] > 0
    assert set(case["profile_ms"]) == {"float_layers", "act_binarize_pack", "binary_kernels", "other"}


@pytest.mark.parametrize("argv", [["--reps", "0"], ["--batch", "-1"], ["--cases", "W3A3"]])
def test_bad_flags_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("python -m benchmarks.bench_infer: error: ")
