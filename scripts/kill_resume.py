#!/usr/bin/env python
"""Kill harness: SIGKILL a tiny ``hbnn train`` at random moments, resume it, compare with an uninterrupted run.

``python scripts/kill_resume.py N [--seed S] [--data-dir DIR] [--out FILE.json]``

One uninterrupted reference run of a tiny recipe (W1.4 A1.4 cifar_fc4, widths 8/16/16,
2 epochs of 6 steps, a checkpoint every 2 steps, 192 train / 64 test images), then ``N``
trials, each in a fresh run directory: start the same command as a subprocess, SIGKILL it
at a moment picked by the trial's strategy (deterministic given ``--seed``; at least a
quarter are before or during the first checkpoint), then ``hbnn train --resume RUN``
until it completes (a run killed before writing anything is resumed the same way; if
``--resume`` refuses a directory without ``config.yaml``, the recipe plus ``--resume``
and then a plain restart are tried, and the path taken is reported).

Strategies (times from the reference run: the run directory appears at ``t_dir``, the first
checkpoint at ``t_ckpt``, the run ends at ``t_end``): ``startup`` (a random delay up to
``t_dir``), ``config_write`` (as soon as a temporary file or ``config.yaml`` appears),
``first_epoch`` (a random delay after the directory appears, up to ``t_ckpt``),
``first_ckpt_write`` (as soon as ``.last.*.tmp`` appears, else right after the first
checkpoint), ``ckpt_write`` (a later checkpoint's temporary file), ``random`` (a random
delay after the directory appears, up to ``t_end``). Even trials take the early
strategies in turn, odd ones a late one. The process is SIGSTOPped first, the directory listed
(the observed moment: ``no_dir``, ``no_config``, ``config_tmp``, ``no_ckpt``,
``first_ckpt_tmp``, ``ckpt_tmp``, ``after_ckpt``) and then SIGKILLed.

Each completed trial must match the reference bit for bit: every tensor of
``last.safetensors`` (model, optimizer, scheduler), the position and metrics in its
metadata (run identity, wall time and the run directory excluded), ``metrics.csv``
without timing columns; and no ``*.tmp`` file may be left in the run directory. Prints a
JSON summary; exits 1 on any mismatch, failed resume or leftover file.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

__all__ = ["STRATEGIES", "train_args", "compare_runs", "run_trial", "run_kills", "main"]

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
STRATEGIES = ("startup", "config_write", "first_epoch", "first_ckpt_write", "ckpt_write", "random")
EARLY = ("startup", "config_write", "first_epoch", "first_ckpt_write")
_TIMING = {"images_per_s", "wall_time_s"}
#: metadata that differs between two runs of one config by design
_IDENTITY = {"run_id", "wall_time_s", "header_sha256", "sha256", "file"}


def train_args(data_dir: Path, out: Path) -> list[str]:
    """``hbnn train`` arguments of the tiny run (12 steps, a checkpoint every 2)."""
    return ["train", "configs/fashion_mnist/w1.4a1.4.yaml", "--data-dir", str(data_dir), "--out", str(out),
            "--epochs", "2", "--batch-size", "32", "--seed", "7", "-q",
            "--set", "train.checkpoint_every_steps=2", "--set", "run.tensorboard=false",
            "--set", "model.kwargs={widths: [8, 16, 16]}", "--set", "data.train_limit=192",
            "--set", "data.test_limit=64"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _hbnn(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hbnn.cli", *args], cwd=REPO, env=_env(), timeout=timeout,
                          capture_output=True, text=True)


def _observe(run: Path) -> str:
    """The moment a (stopped) run is in, from its directory listing."""
    if not run.is_dir():
        return "no_dir"
    names = [p.name for p in run.iterdir()]
    tmp = [n for n in names if n.endswith(".tmp")]
    if any(n.startswith((".last.", ".best.")) for n in tmp):
        return "first_ckpt_tmp" if "last.safetensors" not in names else "ckpt_tmp"
    if "last.safetensors" in names:
        return "after_ckpt"
    if tmp:
        return "config_tmp"
    return "no_ckpt" if "config.yaml" in names else "no_config"


def _wait_for(proc: subprocess.Popen, run: Path, strategy: str, delay: float, deadline: float) -> None:
    """Return when the strategy's moment has come (or the process ended, or the deadline passed)."""
    start = time.monotonic() if strategy == "startup" else None
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            names = os.listdir(run)
        except FileNotFoundError:
            names = None
        if strategy in ("first_epoch", "random") and start is None and names is not None:
            start = time.monotonic()  # the delay of these counts from the directory's appearance
        names = names or []
        if start is not None:
            if time.monotonic() - start >= delay:
                return
            if strategy in ("startup", "first_epoch") and "last.safetensors" in names:
                return  # too late already: kill now, as early as possible
        tmp = [n for n in names if n.endswith(".tmp")]
        ckpt_tmp = [n for n in tmp if n.startswith((".last.", ".best."))]
        if strategy == "config_write" and (tmp or "config.yaml" in names):
            return
        if strategy == "first_ckpt_write" and (ckpt_tmp or "last.safetensors" in names):
            return
        if strategy == "ckpt_write" and ckpt_tmp and "last.safetensors" in names:
            return
        time.sleep(0.0002)


def _kill(run_cmd: list[str], run: Path, strategy: str, delay: float, budget: float) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "hbnn.cli", *run_cmd], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    _wait_for(proc, run, strategy, delay, t0 + budget)
    at = round(time.monotonic() - t0, 3)
    if proc.poll() is not None:
        return {"killed": False, "moment": "finished", "at_s": at, "rc": proc.returncode}
    proc.send_signal(signal.SIGSTOP)
    moment = _observe(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    return {"killed": True, "moment": moment, "at_s": at}


def _continue(run_cmd: list[str], run: Path) -> dict:
    """Resume until completion: ``--resume RUN``; without config.yaml also recipe + --resume, then a restart."""
    tries = [("resume", ["train", "--resume", str(run), "-q"])]
    if not (run / "config.yaml").exists():
        tries += [("resume_with_recipe", [*run_cmd, "--resume", str(run)]), ("restart", run_cmd)]
    errors = []
    for how, args in tries:
        done = _hbnn(args)
        if done.returncode == 0:
            return {"resumed": how, "errors": errors}
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        errors.append(f"{how}: exit {done.returncode}: {lines[-1] if lines else ''}"[:300])
    return {"resumed": None, "errors": errors}


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as fh:
        return [{k: v for k, v in r.items() if k not in _TIMING} for r in csv.DictReader(fh)]


def _header(path: Path) -> dict:
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    (text,) = json.loads(data[8:8 + n])["__metadata__"].values()
    meta = {k: v for k, v in json.loads(text).items() if k not in _IDENTITY}
    if isinstance(meta.get("config"), dict):  # the run directory is not state
        meta["config"] = {k: v for k, v in meta["config"].items() if k != "run"}
    return meta


def compare_runs(ref: Path, run: Path) -> list[str]:
    """What differs between two finished runs (empty: bit-identical state, metadata and metrics)."""
    import torch
    from safetensors.torch import load_file

    problems = []
    for name in ("last", "best"):
        a_path, b_path = ref / f"{name}.safetensors", run / f"{name}.safetensors"
        if a_path.exists() != b_path.exists():
            problems.append(f"{name}.safetensors exists in only one run")
            continue
        if not a_path.exists():
            continue
        a, b = load_file(str(a_path)), load_file(str(b_path))
        if sorted(a) != sorted(b):
            problems.append(f"{name}: tensor names differ")
        bad = [k for k in a if k in b and not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                                and torch.equal(a[k].view(-1).view(torch.uint8),
                                                                b[k].view(-1).view(torch.uint8)))]
        if bad:
            problems.append(f"{name}: {len(bad)} tensors differ, e.g. {bad[0]}")
        ha, hb = _header(a_path), _header(b_path)
        keys = sorted(k for k in set(ha) | set(hb) if json.dumps(ha.get(k), sort_keys=True) !=
                      json.dumps(hb.get(k), sort_keys=True))
        if keys:
            problems.append(f"{name}: metadata differs in {keys}")
    if (ref / "metrics.csv").exists() and _rows(ref) != _rows(run):
        problems.append("metrics.csv rows differ")
    return problems


def run_trial(i: int, seed: int, data_dir: Path, work: Path, ref: Path, times: dict) -> dict:
    """One kill + resume + comparison (strategy ``i`` mod the early/late plan, timing from ``Random(seed/i)``)."""
    rng = random.Random(f"{seed}/{i}")
    strategy = EARLY[(i // 2) % len(EARLY)] if i % 2 == 0 else rng.choice(("ckpt_write", "random", "random"))
    span = {"startup": times["t_dir"], "first_epoch": times["t_ckpt"] - times["t_dir"]}.get(
        strategy, times["t_end"] - times["t_dir"])
    delay = rng.uniform(0.0, max(0.7 * span, 0.05))
    run = work / f"trial{i}"
    cmd = train_args(data_dir, run)
    for attempt in range(3):  # a loaded machine can finish before the delay: try again, earlier
        shutil.rmtree(run, ignore_errors=True)
        trial = {"i": i, "strategy": strategy, "delay_s": round(delay, 3), "attempt": attempt,
                 **_kill(cmd, run, strategy, delay, 2 * times["t_end"] + 60)}
        if trial["killed"]:
            break
        delay /= 3
    trial.update(_continue(cmd, run) if trial["killed"] else {"resumed": "not_killed", "errors": []})
    leftovers = sorted(str(p.relative_to(run)) for p in run.rglob("*.tmp")) if run.exists() else []
    trial["leftover_tmp"] = leftovers
    trial["mismatch"] = compare_runs(ref, run) if trial["resumed"] else ["did not complete"]
    trial["ok"] = not trial["mismatch"] and not leftovers
    shutil.rmtree(run, ignore_errors=True) if trial["ok"] else None
    return trial


def _reference(data_dir: Path, ref: Path) -> dict:
    """Run the reference to completion; ``{"t_dir", "t_ckpt", "t_end"}`` seconds (or ``{"error"}``)."""
    proc = subprocess.Popen([sys.executable, "-m", "hbnn.cli", *train_args(data_dir, ref)], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0, times = time.monotonic(), {}
    while proc.poll() is None:
        if "t_dir" not in times and ref.exists():
            times["t_dir"] = round(time.monotonic() - t0, 3)
        if "t_ckpt" not in times and (ref / "last.safetensors").exists():
            times["t_ckpt"] = round(time.monotonic() - t0, 3)
        time.sleep(0.002)
    times["t_end"] = round(time.monotonic() - t0, 3)
    err = proc.stderr.read()
    proc.stderr.close()
    if proc.returncode != 0:
        return {"error": f"reference run failed: {err.strip()[-500:]}"}
    times.setdefault("t_dir", times["t_end"] / 2)
    times.setdefault("t_ckpt", times["t_end"] * 3 / 4)
    return times


def _fabricated(work: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fuzz_files import fabricate_dataset

    return fabricate_dataset(work / "data", n_train=192)


def run_kills(n: int, seed: int = 0, data_dir: Path | None = None, work: Path | None = None,
              progress: bool = False) -> dict:
    """The reference run and ``n`` trials; the JSON summary (see the module docstring)."""
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="hbnn-kill-")) if owned else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        data_dir = Path(data_dir) if data_dir else (FMNIST if FMNIST.is_dir() else _fabricated(work))
        ref = work / "reference"
        shutil.rmtree(ref, ignore_errors=True)
        times = _reference(data_dir, ref)
        if "error" in times:
            return {**times, "exit": 3}
        trials = []
        for i in range(n):
            trials.append(run_trial(i, seed, data_dir, work, ref, times))
            if progress:
                t = trials[-1]
                print(f"trial {i}: {t['strategy']} -> {t['moment']} at {t['at_s']}s, resumed {t['resumed']}, "
                      f"{'ok' if t['ok'] else 'FAIL ' + str(t['mismatch'] + t['leftover_tmp'] + t['errors'])}",
                      file=sys.stderr, flush=True)
        early = sum(t["moment"] in ("no_dir", "no_config", "config_tmp", "no_ckpt", "first_ckpt_tmp") for t in trials)
        failed = [t for t in trials if not t["ok"]]
        return {"seed": seed, "n": n, "data_dir": str(data_dir), "reference": times,
                "killed": sum(t["killed"] for t in trials), "before_or_during_first_checkpoint": early,
                "moments": dict(Counter(t["moment"] for t in trials)),
                "resumed_via": dict(Counter(str(t["resumed"]) for t in trials)),
                "bit_identical": sum(not t["mismatch"] for t in trials),
                "leftover_tmp": sum(len(t["leftover_tmp"]) for t in trials),
                "failures": failed, "trials": trials, "exit": 1 if failed else 0}
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, nargs="?", default=20, help="number of kills")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", help=f"Fashion-MNIST folder (default {FMNIST}, else fabricated data)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--out", help="also write the JSON summary here")
    args = ap.parse_args(argv)
    summary = run_kills(args.n, args.seed, args.data_dir, args.work, progress=True)
    text = json.dumps({k: v for k, v in summary.items() if k != "trials"}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary["exit"]


if __name__ == "__main__":
    sys.exit(main())
