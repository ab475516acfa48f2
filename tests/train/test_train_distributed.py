"""torchrun + DDP on CPU (gloo, 2 processes): training, checkpoints, resume, a dying rank."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hbnn.train.distributed import DistContext, detect_dist_env, run_on_main

REPO = Path(__file__).resolve().parents[2]


def _torchrun(args):
    # --tee 3: the workers' own stdout/stderr come back prefixed "[default<rank>]:".
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "--tee", "3", "-m", "hbnn.cli", *args]


def _why(done: subprocess.CompletedProcess) -> str:
    """The workers' own lines (the cause) ahead of torchrun's traceback tail."""
    ranks = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("[default")]
    return "\n".join(ranks[-30:]) + "\n--- torchrun:\n" + done.stderr[-1000:]


def _wait_for_checkpoint(out: Path, procs) -> None:
    deadline = time.monotonic() + 240
    while not (out / "last.json").exists():
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def _train_args(data_dir, out, epochs, *extra):
    return ["train", "--data-dir", str(data_dir), "--out", str(out), "--epochs", str(epochs),
            "--batch-size", "32", "-q", "--set", "model.kwargs={widths: [8, 16, 16]}",
            "--set", "run.tensorboard=false", "--set", "dist.timeout_s=60", *extra]


def test_detect_env_and_single_process_helpers():
    assert detect_dist_env({}) == (0, 1, 0)
    assert detect_dist_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with pytest.raises(ValueError, match="inconsistent"):
        detect_dist_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="not an integer"):
        detect_dist_env({"WORLD_SIZE": "two"})
    ctx = DistContext()
    assert ctx.is_main and not ctx.enabled and run_on_main(ctx, lambda: 5) == 5


def test_two_process_run_trains_checkpoints_and_resumes(tmp_path, fmnist_dir, child_env):
    out = tmp_path / "ddp"
    quant = "quant={default: {weight: {bits: 1.4}}}"
    done = subprocess.run(_torchrun(_train_args(fmnist_dir, out, 1, "--set", quant,
                                                "--set", "train.checkpoint_every_steps=2")),
                          cwd=REPO, env=child_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, _why(done)
    meta = json.loads((out / "last.json").read_text())
    # 192 images, global batch 32 = 16 per rank, 96 images per rank -> 6 steps per epoch.
    assert (meta["epoch"], meta["step"], meta["world_size"], len(meta["ranks"])) == (1, 6, 2, 2)
    assert meta["ranks"][0]["rng"] != meta["ranks"][1]["rng"]  # per-rank streams are saved
    assert (out / "best.safetensors").exists() and not list(out.glob(".*.tmp"))

    again = subprocess.run(_torchrun(["train", "--resume", str(out), "--epochs", "2", "-q"]),
                           cwd=REPO, env=child_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, _why(again)
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[-1]["step"] == "12"
    assert 0 <= float(rows[-1]["test_top1"]) <= 1 and float(rows[-1]["weight_bits"]) == pytest.approx(1.4, abs=0.01)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def test_a_dying_rank_fails_the_job_instead_of_hanging(tmp_path, fmnist_dir, child_env):
    out = tmp_path / "ddp_kill"
    proc = subprocess.Popen(_torchrun(_train_args(fmnist_dir, out, 200, "--set", "train.checkpoint_every_steps=2")),
                            cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        _wait_for_checkpoint(out, [proc])
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)  # bounded: a hang raises TimeoutExpired here
        assert proc.returncode != 0
        # torchrun reports the failed workers: the killed one (SIGKILL) and/or the survivor,
        # which may exit first with our one-line DistError ("... the job stops").
        assert "FAILED" in err and ("SIGKILL" in err or "the job stops" in err), err[-2000:]
    finally:
        _reap([proc], workers)


def test_survivor_without_torchrun_exits_with_one_line_error(tmp_path, fmnist_dir, child_env):
    """Multi-node case: nobody kills the survivor for us; the collective error must end it."""
    out = tmp_path / "manual"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**child_env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank)}
        args = _train_args(fmnist_dir, out, 200, "--set", "train.checkpoint_every_steps=2")
        procs.append(subprocess.Popen([sys.executable, "-m", "hbnn.cli", *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        _wait_for_checkpoint(out, procs)
        procs[1].kill()
        _, err = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 2  # a DistError, printed like every hbnn error
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hbnn: error: rank 0: rank 1 closed its connection"), err[-2000:]
    finally:
        _reap(procs, [])


def _reap(procs, pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
