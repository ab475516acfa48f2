"""Exact resume: a CPU run SIGKILLed mid-epoch and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

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
        return ["train", "configs/fashion_mnist/w1.4a1.4.yaml", "--data-dir", str(fmnist_dir),
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
