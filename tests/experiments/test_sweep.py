"""The sweep runner: run states (skip / resume / restart), result files, a tiny real sweep."""

from __future__ import annotations

import json

import pytest
import torch

from hbnn.cli import main
from hbnn.errors import FormatError
from hbnn.experiments.results import TRAIN_KEYS, append_result, git_commit, latest, read_results
from hbnn.experiments.runner import run_status, select_runs
from hbnn.experiments.kinds import expand
from hbnn.experiments.spec import load_experiment

POINTS = [{"name": "fp"}, {"name": "w1.4", "weight": 1.4, "seeds": [0, 1]}, {"name": "w2", "weight": 2}]


@pytest.fixture
def runs(write_experiment):
    return expand(load_experiment(write_experiment("tiny", POINTS)))


def test_states_from_results_and_run_dirs(runs, tmp_path):
    fp, mo0, mo1, w2 = runs
    lines = [{"run": fp.name, "config_sha": fp.sha, "top1": 0.5},
             {"run": mo0.name, "config_sha": "an-older-config"}]
    (mo0.run_dir(tmp_path)).mkdir(parents=True)
    (mo0.run_dir(tmp_path) / "last.safetensors").write_bytes(b"")  # interrupted after a checkpoint
    (mo1.run_dir(tmp_path)).mkdir(parents=True)
    (mo1.run_dir(tmp_path) / "config.yaml").write_text("{}")          # killed before the first one
    states = run_status(runs, lines, tmp_path)
    assert [s.state for s in states] == ["done", "resume", "restart", "new"]
    assert states[0].detail == "top1 50.00%"
    assert "another config" in states[1].detail


def test_select_runs_by_point_or_run_name(runs):
    assert [r.name for r in select_runs(runs, ["w1.4"])] == ["tiny/w1.4/seed0", "tiny/w1.4/seed1"]
    assert [r.name for r in select_runs(runs, ["w1.4/seed1"])] == ["tiny/w1.4/seed1"]
    assert [r.name for r in select_runs(runs, ["w*"])][-1] == "tiny/w2/seed0"
    assert len(select_runs(runs, [])) == 4


def test_dry_run_lists_states(write_experiment, tmp_path, capsys):
    path = write_experiment("tiny", POINTS)
    results = tmp_path / "r.jsonl"
    assert main(["sweep", str(path), "--dry-run", "--results", str(results), "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 runs (4 new)" in out and "tiny/w1.4/seed1" in out
    assert not results.exists()


def test_unknown_only_is_an_error(write_experiment, capsys):
    assert main(["sweep", str(write_experiment("tiny", POINTS)), "--only", "nope", "--dry-run"]) == 2
    assert "matches no run" in capsys.readouterr().err


def test_append_and_read_results(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    append_result(path, {"run": "a", "top1": 0.1})
    path.write_text(path.read_text().rstrip("\n"))  # a file edited by hand without the final newline
    append_result(path, {"run": "b", "top1": float("nan")})
    append_result(path, {"run": "a", "top1": 0.3})
    lines = read_results(path)
    assert [x["run"] for x in lines] == ["a", "b", "a"]
    assert lines[1]["top1"] is None  # strict JSON
    assert [(x["run"], x["top1"]) for x in latest(lines)] == [("a", 0.3), ("b", None)]
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.jsonl"]  # no temp files left
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(FormatError, match="line 4"):
        read_results(path)


# ----------------------------------------------------------------------------- a real tiny sweep

@pytest.mark.usefixtures("needs_fmnist")
def test_tiny_sweep_end_to_end(write_experiment, tmp_path, capsys):
    """Two runs: fp (new) and w1.4a1.4 (interrupted after epoch 1 of 2, so resumed).

    Then --verify re-trains the resumed run from its recorded config, uninterrupted: the
    same accuracy proves both exact resume and re-run reproducibility.
    """
    from hbnn.train.config import config_from_dict
    from hbnn.train.run import fit

    points = [{"name": "fp"}, {"name": "w1.4a1.4", "weight": 1.4, "act": 1.4, "set": {"train.epochs": 2}}]
    path = write_experiment("tiny", points)
    runs_dir, results = tmp_path / "runs", tmp_path / "results" / "tiny.jsonl"
    spec = expand(load_experiment(path))[1]
    first_epoch = dict(spec.config, train={**spec.config["train"], "epochs": 1})
    fit(config_from_dict(first_epoch), spec.run_dir(runs_dir), quiet=True)  # the "interrupted" run

    args = ["sweep", str(path), "--results", str(results), "--runs-dir", str(runs_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 resume, 1 new" in out
    lines = read_results(results)
    assert [x["run"] for x in lines] == ["tiny/fp/seed0", "tiny/w1.4a1.4/seed0"]
    for line in lines:
        assert set(TRAIN_KEYS) <= set(line)
        assert 0.0 <= line["top1"] <= line["top5"] <= 1.0
        assert line["config"]["train"]["seed"] == 0 and line["wall_s"] > 0
        assert line["hardware"]["threads"] == torch.get_num_threads() and line["hardware"]["device"] == "cpu"
        assert line["git_commit"] == git_commit()  # None outside a git checkout
        assert json.loads(json.dumps(line)) == line
    fp, het = lines
    assert fp["weight_bits"] == 32 and fp["act_bits"] == 32 and fp["binarized_params"] == 0
    assert het["weight_bits"] == pytest.approx(1.4, abs=0.02) and het["epochs"] == 2
    assert het["act_bits"] == pytest.approx(1.4, abs=0.02)
    assert het["stored_bytes"] < fp["stored_bytes"]
    assert het["spec"]["weight"] == 1.4 and het["config_sha"] == spec.sha

    assert main(args) == 0  # everything is done now: nothing runs, nothing is appended
    assert "2 runs (2 done)" in capsys.readouterr().out and len(read_results(results)) == 2

    assert main([*args, "--verify", "--only", "w1.4a1.4"]) == 0
    assert "-> same" in capsys.readouterr().out


def test_git_commit_names_this_checkout():
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert git_commit().split("+")[0] == head.stdout.strip()
