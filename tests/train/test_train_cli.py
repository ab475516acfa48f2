"""``hbnn train/eval/summary`` through ``hbnn.cli.main``: run records and every bad input."""

from __future__ import annotations

import csv
import json
import struct

import pytest
import yaml

import hbnn.io
from hbnn.cli import main
from hbnn.quant import BitMix
from hbnn.train.config import config_from_dict
from hbnn.train.logs import METRIC_FIELDS

QUANT = "quant={default: {weight: {bits: 1.4}, act: {bits: 1.4}}}"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("hbnn: error: ")
    return err[0]


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_dir(tmp_path, tiny_args):
    """A finished 1-epoch HBNN (W1.4 A1.4) run."""
    out = tmp_path / "run"
    assert main(tiny_args(out, "--set", QUANT, "--set", "model.activation=hardtanh",
                          "--set", "train.checkpoint_every_steps=2", epochs=1)) == 0
    return out


def test_train_writes_a_complete_run_dir(run_dir, tmp_path, tiny_args):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "metrics.csv", "last.safetensors", "last.json", "best.safetensors",
            "best.json"} <= names
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert cfg.train.epochs == 1 and cfg.train.batch_size == 32 and cfg.quant.default.act.bits == BitMix.coerce(1.4)
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == METRIC_FIELDS and len(rows) == 1
    row = rows[0]
    assert row["epoch"] == "1" and row["step"] == "6"  # 192 images / batch 32
    assert 0 <= float(row["test_top1"]) <= float(row["test_top5"]) <= 1
    assert float(row["weight_bits"]) == pytest.approx(1.4, abs=0.01)
    assert float(row["act_bits"]) == pytest.approx(1.4, abs=0.05)
    meta = json.loads((run_dir / "last.json").read_text())
    assert (meta["epoch"], meta["batch_in_epoch"], meta["step"]) == (1, 0, 6)
    assert meta["model"]["name"] == "cifar_fc4" and meta["model"]["in_channels"] == 1
    assert meta["schema_version"] == 2 and len(meta["sha256"]) == 64 and "rng" in meta["ranks"][0]
    assert meta["run_id"] == json.loads((run_dir / "run.json").read_text())["run_id"]


def test_tensorboard_events_are_written(tmp_path, tiny_args):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb_run"
    assert main(tiny_args(out, "--set", "run.tensorboard=true", "--set", "data.train_limit=64", epochs=1)) == 0
    assert any((out / "tb").glob("events.out.tfevents.*"))


def test_eval_text_and_json(run_dir, capsys):
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    line = capsys.readouterr().out
    assert "top1" in line and "top5" in line and "best.safetensors" in line
    assert main(["eval", str(run_dir / "last.json"), "--json", "--limit", "10"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 10 and result["model"] == "cifar_fc4" and 0 <= result["top1"] <= 1


def test_summary_of_run_dir_model_name_and_recipe(run_dir, capsys):
    capsys.readouterr()
    assert main(["summary", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "HBConv2d" in out and "avg weight bits 1.4" in out
    assert main(["summary", "cifar_fc4", "--dataset", "cifar10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["avg_weight_bits"] == 32.0 and data["layers"][0]["name"] == "features.0"
    assert main(["summary", "src/hbnn/recipes/fashion_mnist/w2.yaml"]) == 0
    assert "avg weight bits 2.000" in capsys.readouterr().out


def test_existing_run_dir_is_refused_untouched(run_dir, tiny_args, capsys):
    before = _snapshot(run_dir)
    capsys.readouterr()
    assert main(tiny_args(run_dir, epochs=1)) == 2
    line = _error_line(capsys)
    assert "already exists" in line and "--resume" in line and "--overwrite" in line
    assert _snapshot(run_dir) == before


def test_overwrite_starts_over_but_only_in_run_dirs(run_dir, tmp_path, tiny_args, capsys):
    (run_dir / "notes.txt").write_text("mine")
    assert main(tiny_args(run_dir, "--overwrite", "--set", "data.train_limit=64", epochs=1)) == 0
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert json.loads((run_dir / "last.json").read_text())["step"] == 2
    other = tmp_path / "home"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    capsys.readouterr()
    assert main(tiny_args(other, "--overwrite", epochs=1)) == 2
    assert "not an hbnn run directory" in _error_line(capsys)
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize("extra, words", [
    (["--model", "resnet50"], ["resnet50", "cifar_fc4", "mobilenet_v1"]),
    (["--dataset", "svhn"], ["svhn", "fashion_mnist", "cifar10"]),
    (["--optimizer", "rmsprop"], ["rmsprop", "sgd", "adam"]),
    (["--set", "train.epoch=3"], ["train.epoch", "epochs"]),
    (["--set", "bogus.x=1"], ["bogus", "model", "train"]),
    (["--set", "model.kwargs={depth: 3}"], ["depth", "widths"]),
    (["--epochs", "0"], ["train.epochs", "0"]),
    (["--lr", "-0.1"], ["optim.lr", "-0.1"]),
    (["--set", "train.epochs"], ["KEY=VALUE"]),
    (["--set", "quant={default: {weight: {bits: 7.5}}}"], ["quant"]),
    (["--set", "sched.name=poly"], ["poly", "cosine"]),
    (["--batch-size", "1000"], ["batch_size", "1000"]),
])
def test_bad_train_input_is_one_line_exit_2(tmp_path, tiny_args, capsys, extra, words):
    out = tmp_path / "bad"
    assert main(tiny_args(out, *extra, epochs=1)) == 2
    line = _error_line(capsys)
    for word in words:
        assert word in line
    assert not out.exists()


def test_missing_dataset_and_recipe(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), "-q"]) == 2
    assert "--data-dir" in _error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data-dir", str(empty), "--out", str(tmp_path / "r"), "-q"]) == 2
    _error_line(capsys)
    assert main(["train", "no/such/recipe", "--out", str(tmp_path / "r")]) == 2
    assert "config file not found" in _error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "three"])
    assert info.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def _flip_payload_byte(path):
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n + 3] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, words", [
    (_flip_payload_byte, ["corrupt", "checksum"]),
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), ["truncated"]),
    (lambda p: p.write_bytes(b""), ["truncated"]),
])
def test_damaged_checkpoints_are_refused_by_eval_and_resume(run_dir, capsys, damage, words):
    for name in ("best", "last"):
        damage(run_dir / f"{name}.safetensors")
    before = _snapshot(run_dir)
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 2
    line = _error_line(capsys)
    assert any(w in line for w in words)
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "-q"]) == 2
    line = _error_line(capsys)
    assert any(w in line for w in words)
    for command in ("summary", "export"):  # never a fresh model in its place
        assert main([command, str(run_dir), *(["--out", str(run_dir / "m.hbnn")] if command == "export" else [])]) == 2
        line = _error_line(capsys)
        assert any(w in line for w in words) and "best.safetensors" in line
    assert _snapshot(run_dir) == before


def test_summary_and_eval_of_a_run_without_checkpoint_are_errors(run_dir, capsys):
    for path in run_dir.glob("*.safetensors"):
        path.unlink()
    for path in run_dir.glob("*.json"):
        if path.name != "run.json":
            path.unlink()
    capsys.readouterr()
    assert main(["summary", str(run_dir)]) == 2
    line = _error_line(capsys)
    assert "no checkpoint" in line and "config.yaml" in line
    assert main(["eval", str(run_dir)]) == 2
    assert "no checkpoint" in _error_line(capsys)
    assert main(["summary", str(run_dir / "config.yaml")]) == 0  # the config, asked for explicitly


def test_incompatible_checkpoint_is_refused(run_dir, tmp_path, tiny_args, capsys):
    other = tmp_path / "wide"
    assert main(tiny_args(other, "--set", "model.kwargs={widths: [8, 16, 32]}", "--set",
                          "data.train_limit=64", epochs=1)) == 0
    meta = json.loads((run_dir / "last.json").read_text())
    # Graft the wide run's tensors under the narrow run's config: shapes disagree.
    cfg_text = (run_dir / "config.yaml").read_text()
    (other / "config.yaml").write_text(cfg_text)
    capsys.readouterr()
    assert main(["train", "--resume", str(other), "--epochs", "2", "-q"]) == 2
    assert "incompatible" in _error_line(capsys)
    assert meta["step"] == 6


def test_eval_and_summary_bad_targets(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing.safetensors")]) == 2
    assert "not found" in _error_line(capsys)
    assert main(["eval", str(tmp_path)]) == 2
    assert "no checkpoint" in _error_line(capsys)
    assert main(["summary", "resnet50"]) == 2
    assert "cifar_fc4" in _error_line(capsys)


def test_resume_rules(run_dir, tmp_path, tiny_args, capsys):
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--batch-size", "16", "-q"]) == 2
    assert "cannot change train.batch_size" in _error_line(capsys)
    assert main(["train", "src/hbnn/recipes/fashion_mnist/fp.yaml", "--resume", str(run_dir), "-q"]) == 2
    assert "cannot change" in _error_line(capsys)  # a recipe with --resume must be the run's
    assert main(["train", "--resume", str(tmp_path / "none"), "-q"]) == 2
    assert "not an hbnn run directory" in _error_line(capsys)
    assert main(["train", "--resume", str(run_dir), "--set", "sched.name=cosine", "-q"]) == 2
    assert "cannot change sched.name" in _error_line(capsys)
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "-q"]) == 0  # extend the run
    with (run_dir / "metrics.csv").open() as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 2


def test_failed_checkpoint_write_exits_2_and_keeps_previous_checkpoint(run_dir, monkeypatch, capsys):
    import os

    before = _snapshot(run_dir)
    real_fsync = os.fsync

    def full_disk_for_tensors(fd):
        if ".safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(hbnn.io.os, "fsync", full_disk_for_tensors)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "-q"]) == 2
    assert "No space left on device" in _error_line(capsys)
    monkeypatch.undo()
    after = _snapshot(run_dir)
    for name in ("last.safetensors", "last.json", "best.safetensors", "best.json"):
        assert after[type(next(iter(after)))(name)] == before[type(next(iter(before)))(name)]
    assert not list(run_dir.glob(".*.tmp"))
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "-q"]) == 0  # and it resumes
    with (run_dir / "metrics.csv").open() as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"]


def test_recipe_short_names_and_default_run_dir(tmp_path, fmnist_dir, monkeypatch, capsys):
    from pathlib import Path

    from hbnn.train.rundir import default_run_dir
    from hbnn.configs import recipes_root
    from hbnn.train.config import resolve_recipe

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    assert resolve_recipe("fashion_mnist/w1.4_mo") == recipes_root() / "fashion_mnist" / "w1.4_mo.yaml"
    assert resolve_recipe("src/hbnn/recipes/cifar10/fp.yaml") == Path("src/hbnn/recipes/cifar10/fp.yaml")
    assert default_run_dir(Path("configs/cifar10/w1.yaml"), "cifar_fc4", "cifar10") == Path("runs/cifar10-w1")
    assert default_run_dir(None, "cifar_fc4", "mnist") == Path("runs/cifar_fc4-mnist")
    out = tmp_path / "short"
    assert main(["train", "fashion_mnist/w2", "--data-dir", str(fmnist_dir), "--out", str(out), "--epochs", "1",
                 "--batch-size", "64", "-q", "--set", "run.tensorboard=false", "--set", "train.threads=1"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["quant"]["default"]["weight"]["bits"] == 2


def test_model_from_checkpoint_and_hw_estimate(run_dir, capsys):
    import torch

    from hbnn.train.rebuild import model_from_checkpoint

    model, ckpt = model_from_checkpoint(run_dir, "last")
    assert not model.training and ckpt.metadata["step"] == 6
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt.model_state[key])
    from hbnn.hw import profile_model

    layers = profile_model(model, (1, 28, 28))
    assert main(["hw", "estimate", "--run", str(run_dir), "--per-layer", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["network"]["macs"] == sum(layer.macs for layer in layers) > 0
    assert [row["name"] for row in report["layers"]] == [layer.name for layer in layers]


def test_summary_of_a_packed_file_says_what_it_is(tmp_path, capsys):
    packed = tmp_path / "model.hbnn"
    packed.write_bytes(b"not yaml: [")
    assert main(["summary", str(packed)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is a packed model" in err and f"hbnn infer {packed}" in err
