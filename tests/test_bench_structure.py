"""``python -m benchmarks.bench_structure``: the structure study's latency JSON (quick settings on a tiny
net; no speed asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks.bench_structure import cpu_model, main

FMNIST = Path("/usr/share/datasets/fashion-mnist")
TINY = {
    "description": "tiny structure study",
    "figure": "structure",
    "recipe": [{"model": {"name": "cifar_fc4", "activation": "hardtanh", "kwargs": {"widths": [8, 16, 16]}},
                "data": {"name": "fashion_mnist", "train_limit": 128, "test_limit": 64},
                "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
                "sched": {"name": "constant"},
                "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "log_every_steps": 1000, "threads": 1},
                "run": {"tensorboard": False, "progress": False}}],
    "layout": {"keep_first": True, "keep_last": True},
    "seeds": [0],
    "points": [
        {"name": "fp"},
        {"name": "w2a2", "weight": 2, "act": 2},
        {"name": "w2", "weight": 2},
        {"name": "w1.4_channel", "weight": 1.4, "structure": "channel", "allocate": "error"},
        {"name": "w1.4a1.4_block8", "weight": 1.4, "act": 1.4, "structure": "block8", "act_structure": "group8"},
    ],
}


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny_structure.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path


def _run(argv, capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_quick_mode_reports_every_point(tiny, tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = _run(["--experiment", str(tiny), "--runs-dir", str(tmp_path / "runs"), "--quick", "--input", "random",
                   "--threads", "1", "--out", str(out)], capsys)
    assert json.loads(out.read_text()) == result
    assert result["benchmark"] == "bench_structure" and result["quick"] is True and result["reps"] == 3
    assert result["input"] == [8, 1, 28, 28] and result["input_kind"] == "random" and result["threads"] == 1
    assert result["cpu_model"] == cpu_model() and "kernel_variant" in result
    assert result["fp32_ms"] > 0 and result["fp32_channels_last_ms"] > 0 and result["weights"] == ["random"]
    rows = {r["point"]: r for r in result["points"]}
    assert list(rows) == ["fp", "w2a2", "w2", "w1.4_channel", "w1.4a1.4_block8"]
    for r in rows.values():
        assert r["packed_ms"] > 0 and r["weights"] == "random" and r["run_dir"] is None
        assert r["time_vs_fp32"] == r["packed_ms"] / result["fp32_ms"]
        assert r["time_vs_w2a2"] == r["packed_ms"] / rows["w2a2"]["packed_ms"]
        assert r["mismatches"] >= 0 and r["max_abs_logit_diff"] >= 0
    assert rows["w2a2"]["time_vs_w2a2"] == 1.0 and rows["w2a2"]["ref"] == "w2a2"
    block = rows["w1.4a1.4_block8"]
    assert (block["structure"], block["allocate"], block["act_structure"]) == ("block8", "key", "group8")
    assert block["ref"] == "w2a2" and block["time_vs_ref"] == block["packed_ms"] / rows["w2a2"]["packed_ms"]
    assert block["binary_layers"] == 2 and rows["w2"]["binary_layers"] == 0  # weights only: float convs
    channel = rows["w1.4_channel"]
    assert channel["ref"] == "w2" and (channel["structure"], channel["allocate"], channel["act_structure"]) == (
        "channel", "error", None)
    assert rows["fp"]["ref"] is None and rows["fp"]["bits_per_binarized_weight"] is None
    # sizes from the export's size report: planes + map + scales (64-bit words: padding on a net this small)
    for r in (rows["w2a2"], block, channel):
        assert r["bits_per_binarized_weight"] == pytest.approx(sum(r["bits_per_binarized_weight_split"].values()))
    assert rows["w2a2"]["bits_per_binarized_weight_split"]["planes"] >= 2.0
    assert block["bits_vs_ref"] == block["bits_per_binarized_weight"] / rows["w2a2"]["bits_per_binarized_weight"] < 1


def test_quick_mode_writes_no_file_without_out(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run(["--experiment", str(tiny), "--runs-dir", "runs", "--quick", "--input", "random",
                   "--only", "w2a2"], capsys)
    assert [r["point"] for r in result["points"]] == ["w2a2"] and not (tmp_path / "results").exists()


def test_a_finished_run_folder_is_used(tiny, tmp_path, capsys):
    if not (FMNIST / "t10k-images-idx3-ubyte.gz").exists() and not (FMNIST / "t10k-images-idx3-ubyte").exists():
        pytest.skip("Fashion-MNIST not installed (make data)")
    from hbnn.cli import main as hbnn_main

    runs = tmp_path / "runs"
    assert hbnn_main(["sweep", str(tiny), "--runs-dir", str(runs), "--results", str(tmp_path / "r.jsonl"),
                      "--only", "w2a2"]) == 0
    capsys.readouterr()
    result = _run(["--experiment", str(tiny), "--runs-dir", str(runs), "--quick", "--only", "w2*"], capsys)
    rows = {r["point"]: r for r in result["points"]}
    assert rows["w2a2"]["weights"] == "trained" and Path(rows["w2a2"]["run_dir"]).parent == runs / "tiny_structure" / "w2a2"
    assert rows["w2"]["weights"] == "random" and result["weights"] == ["random", "trained"]
    assert result["input_kind"] == "test"
    # another config's folder (e.g. other --set values) is listed, not used
    other = _run(["--experiment", str(tiny), "--runs-dir", str(runs), "--quick", "--only", "w2a2",
                  "--set", "optim.lr=0.01"], capsys)["points"][0]
    assert other["weights"] == "random" and other["other_run_dirs"] == [rows["w2a2"]["run_dir"]]


@pytest.mark.parametrize("argv, message", [
    (["--reps", "0"], "--reps: 0 is invalid"),
    (["--batch", "-1"], "--batch: -1 is invalid"),
    (["--only", "nothing*"], "matches no point"),
    (["--experiment", "no_such_experiment"], "not found"),
])
def test_bad_flags_exit_2_with_one_line(tiny, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--experiment", str(tiny), *argv])
    assert exc.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("python -m benchmarks.bench_structure: error: ") and message in last
