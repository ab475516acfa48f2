"""``python -m benchmarks.bench_infer``: the whole-net benchmark's JSON (smoke settings; no speed asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_infer import CASE_NAMES, STAGES, case_specs, main, targets


def _run(argv, capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_infer_quick_prints_json(capsys):
    result = _run(["--quick", "--cases", "W1A1", "W1.4A1.4-channel-pixel", "--batch", "4"], capsys)
    assert result["model"] == "cifar_fc4" and result["input"] == [4, 3, 32, 32] and result["cpu_model"]
    w1a1, structured = result["cases"]
    assert w1a1["config"] == "W1A1" and w1a1["structure"] == "entry" and w1a1["mismatches"] == 0
    assert structured["structure"] == "channel/pixel" and structured["mismatches"] == 0
    assert structured["quant"]["act"] == {"bits": 1.4, "structure": "pixel"}
    for case in result["cases"]:
        assert case["packed_ms"] > 0 and "simulated_ms" in case and set(case["profile_ms"]) == set(STAGES)
        assert case["profile_ms"]["residual_add"] == case["profile_ms"]["shortcut"] == 0  # a chain
    # issue 10's targets for the cases that ran (no W2A2: no ratio against it)
    assert {(t["case"], t["target"]) for t in result["targets"]} == {
        ("W1.4A1.4-channel-pixel", ">= 4"), ("W1.4A1.4-channel-pixel", ">= 2.5"), ("W1A1", ">= 4")}


def test_resnet20_profile_follows_the_graph(capsys):
    argv = ["--model", "resnet20", "--quick", "--cases", "W1A1", "--batch", "2", "--image-size", "8",
            "--in-channels", "1", "--no-simulated"]
    result = _run(argv, capsys)
    (case,) = result["cases"]
    assert result["input"] == [2, 1, 8, 8] and case["mismatches"] == 0 and "simulated_ms" not in case
    stages = [row["stage"] for row in case["layers"]]
    # the plan: 61 graph nodes, each residual add and activation fused into the conv before it
    assert len(stages) == 61 - 27 and stages.count("binary") == 18 and stages.count("residual_add") == 0
    fused = [row["fused"] for row in case["layers"] if "fused" in row]
    assert len(fused) == 18 and sum(len(f) == 3 and ".add" in f[1] for f in fused) == 9
    assert case["profile_ms"]["residual_add"] == 0
    # option A: identity shortcuts, and subsample + channel padding on the two downsampling blocks
    assert stages.count("shortcut") == 7 + 2 * 2 and case["profile_ms"]["shortcut"] > 0
    assert {t["issue"] for t in result["targets"]} == {10, 11}


def test_case_specs_name_their_structures():
    specs = case_specs(16)
    assert list(specs) == list(CASE_NAMES)
    assert specs["W1A1"] == ("entry", {"weight": {"bits": 1}, "act": {"bits": 1}})
    assert specs["W1.4A1.4-block64-group"] == ("block64/group16", {"weight": {"bits": 1.4, "structure": "block64"},
                                                                   "act": {"bits": 1.4, "structure": "group16"}})


def test_targets_compare_ratios_with_the_issue_goals():
    def case(config, structure, packed, fp32=8.0, cl=5.0):
        return {"config": config, "structure": structure, "packed_ms": packed, "speedup_vs_fp32": fp32 / packed,
                "speedup_vs_fp32_channels_last": cl / packed}

    cases = [case("W1A1", "entry", 2.5), case("W2A2", "entry", 3.0), case("S", "channel/pixel", 2.0)]
    got = {(t["issue"], t["case"], t["ratio"]): (t["value"], t["met"]) for t in targets("resnet20", cases)}
    assert got == {
        (10, "S", "packed_ms / W2A2 packed_ms"): (0.667, True),
        (10, "S", "fp32_ms / packed_ms"): (4.0, True),
        (10, "S", "fp32_channels_last_ms / packed_ms"): (2.5, True),
        (10, "W1A1", "fp32_ms / packed_ms"): (3.2, False),
        (11, "W1A1", "fp32_ms / packed_ms"): (3.2, True),
    }
    assert {t["issue"] for t in targets("cifar_fc4", cases)} == {10}


@pytest.mark.parametrize("argv", [["--reps", "0"], ["--batch", "-1"], ["--cases", "W3A3"], ["--model", "vgg"],
                                  ["--image-size", "0"]])
def test_bad_flags_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("python -m benchmarks.bench_infer: error: ")
