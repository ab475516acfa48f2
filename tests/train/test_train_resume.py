"""Exact resume: a CPU run SIGKILLed mid-epoch and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from hbnn.train.checkpoint import load_checkpoint

QUANT = "quant={default: {weight: {bits: 1.4}, act: {bits: 1.4}}}"
TIMING = {"images_per_s", "wall_time_s"}


def _cmd(args):
    return [sys.executable, "-m", "hbnn.cli", *args]


def _rows(run):
    with (run / "metrics.csv").open() as fh:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, fmnist_dir, child_env):
    def args(out):
        # 192 images / batch 32 = 6 steps per epoch, 3 epochs; a checkpoint every 4 steps lands
        # mid-epoch (steps 4, 8, 16); HBNN weights and activations exercise the quantizers' state.
        return ["train", "src/hbnn/recipes/fashion_mnist/w1.4a1.4.yaml", "--data-dir", str(fmnist_dir),
                "--out", str(out), "--epochs", "3", "--batch-size", "32", "--seed", "7", "-q",
                "--set", "train.checkpoint_every_steps=4", "--set", "run.tensorboard=false",
                "--set", "model.kwargs={widths: [16, 32, 32]}"]

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cmd(args(full)), cwd=repo, env=child_env, check=True, timeout=300)

    proc = subprocess.Popen(_cmd(args(killed)), cwd=repo, env=child_env)
    deadline = time.monotonic() + 240
    while True:
        assert proc.poll() is None, "training ended before a mid-epoch checkpoint was caught"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        if (killed / "last.safetensors").exists():
            proc.send_signal(signal.SIGSTOP)  # freeze it: what is on disk now is what it leaves
            meta = load_checkpoint(killed).metadata
            if meta["batch_in_epoch"] > 0:
                break
            proc.send_signal(signal.SIGCONT)  # an epoch-end checkpoint: wait for a mid-epoch one
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert 0 < meta["batch_in_epoch"] < 6 and meta["step"] < 18  # killed mid-epoch, before the end

    subprocess.run(_cmd(["train", "--resume", str(killed), "-q"]), cwd=repo, env=child_env,
                   check=True, timeout=300)

    a, b = load_file(str(full / "last.safetensors")), load_file(str(killed / "last.safetensors"))
    assert sorted(a) == sorted(b) and any(k.startswith("optim/") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key  # atol=0: bit-identical weights, buffers, momenta
    ma, mb = (json.loads((r / "last.json").read_text()) for r in (full, killed))
    assert (ma["epoch"], ma["step"], ma["payload_sha256"]) == (mb["epoch"], mb["step"], mb["payload_sha256"])
    assert _rows(full) == _rows(killed)  # same losses and accuracies, epoch by epoch
    assert len(_rows(full)) == 3


# ----------------------------------------------------------------------------- kills at every stage, in-process

class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (BaseException, so no handler catches it)."""


def _tiny(fmnist_dir, out):
    # 64 images / batch 32 = 2 steps per epoch, 2 epochs, a checkpoint every step.
    return ["--data-dir", str(fmnist_dir), "--out", str(out), "--epochs", "2", "--batch-size", "32", "-q",
            "--seed", "3", "--set", "data.train_limit=64", "--set", "train.limit_test_batches=1",
            "--set", "train.checkpoint_every_steps=1", "--set", "run.tensorboard=false",
            "--set", "model.kwargs={widths: [8, 16, 16]}", "--set", QUANT]


def _train(fmnist_dir, out, *extra):
    from hbnn.cli import main

    assert main(["train", *_tiny(fmnist_dir, out), *extra]) == 0


def _kill_at_save(monkeypatch, k, how):
    """Patch the k-th checkpoint save of the next run to die in the state ``how`` leaves on disk."""
    import hbnn.train.run as run_module

    real = run_module.save_checkpoint
    calls = []

    def save(path, **kwargs):
        calls.append(path)
        if len(calls) < k:
            return real(path, **kwargs)
        tensor_path = path.with_name(path.name + ".safetensors")
        if how == "tensor_tmp":  # killed while writing the tensor file: old halves stay
            tensor_path.with_name(f".{tensor_path.name}.0123abcd.tmp").write_bytes(b"\0" * 1000)
        elif how == "between_renames":  # new tensor file, old (or no) JSON half
            side = path.with_name(path.name + ".json")
            old = side.read_bytes() if side.exists() else None
            real(path, **kwargs)
            if old is None:
                side.unlink()
            else:
                side.write_bytes(old)
            side.with_name(f".{side.name}.89abcdef.tmp").write_bytes(b"{")
        raise _Killed

    monkeypatch.setattr(run_module, "save_checkpoint", save)


def _same_end_state(ref, run):
    for name in ("last", "best"):
        a, b = load_file(str(ref / f"{name}.safetensors")), load_file(str(run / f"{name}.safetensors"))
        assert sorted(a) == sorted(b)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
        ma, mb = (load_checkpoint(r, name).metadata for r in (ref, run))
        assert (ma["epoch"], ma["step"], ma["batch_in_epoch"], ma["best_metric"]) == \
               (mb["epoch"], mb["step"], mb["batch_in_epoch"], mb["best_metric"])
    assert _rows(ref) == _rows(run) and len(_rows(ref)) == 2
    assert not list(run.glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fmnist_dir):
    out = tmp_path_factory.mktemp("ref") / "run"
    torch.set_num_threads(1)
    _train(fmnist_dir, out)
    return out


@pytest.mark.parametrize("k, how", [
    (1, "tensor_tmp"),        # during the first checkpoint write: config.yaml, no checkpoint
    (1, "between_renames"),   # first save: new tensor file, no JSON half yet
    (3, "tensor_tmp"),        # a later write: temp file beside the old halves
    (3, "between_renames"),   # new tensor file beside the previous save's JSON half
    (2, "before"),            # right before the epoch-end saves (metrics row written)
    (3, "before_best"),       # between best and last at the epoch end
])
def test_kill_at_any_save_then_resume_is_bit_identical(reference, tmp_path, fmnist_dir, monkeypatch, capsys, k, how):
    run = tmp_path / "run"
    if how == "before_best":  # saves: last(1), best(2), last(2), ...: die after best, before last
        k, how = 3, "before"
    _kill_at_save(monkeypatch, k, how)
    with pytest.raises(_Killed):
        _train(fmnist_dir, run)
    monkeypatch.undo()
    had_tmp = bool(list(run.glob(".*.tmp")))
    capsys.readouterr()
    from hbnn.cli import main

    assert main(["train", "--resume", str(run)]) == 0  # not quiet: the removal is reported
    out = capsys.readouterr().out
    assert ("stale temporary file" in out) == had_tmp
    _same_end_state(reference, run)


def test_kill_during_config_write_resumes_with_the_same_command(reference, tmp_path, fmnist_dir, capsys):
    from hbnn.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")  # even a torn identity file: the run never started
    (run / ".config.yaml.0123abcd.tmp").write_text("model: {na")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "-q"]) == 2  # no config to resume from: say how
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "recipe" in err[0]
    _train(fmnist_dir, run, "--resume")  # the killed command plus --resume
    _same_end_state(reference, run)


def test_kill_before_the_first_checkpoint_restarts_from_step_0(reference, tmp_path, fmnist_dir, monkeypatch):
    run = tmp_path / "run"
    _kill_at_save(monkeypatch, 1, "before")
    with pytest.raises(_Killed):
        _train(fmnist_dir, run)
    monkeypatch.undo()
    assert (run / "config.yaml").exists() and not (run / "last.safetensors").exists()
    _train(fmnist_dir, run, "--resume")  # same command + --resume: the saved config
    _same_end_state(reference, run)


def test_a_run_dir_with_a_foreign_checkpoint_is_refused(reference, tmp_path, fmnist_dir, capsys):
    from hbnn.cli import main

    run = tmp_path / "run"
    _train(fmnist_dir, run, "--epochs", "1")
    for name in ("last.safetensors", "last.json"):
        (run / name).write_bytes((reference / name).read_bytes())  # another run's checkpoint
    capsys.readouterr()
    for args in (["train", "--resume", str(run), "-q"], ["eval", str(run), "--which", "last"],
                 ["summary", str(run / "last.safetensors")]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "belongs to another run" in err[0] and "last.safetensors" in err[0], args
