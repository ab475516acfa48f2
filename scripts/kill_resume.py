#!/usr/bin/env python
"""Kill harness: SIGKILL a tiny ``hbnn train`` at chosen progress events, resume it, compare with an uninterrupted run.

``python scripts/kill_resume.py N [--seed S] [--data-dir DIR] [--out FILE.json]``

One uninterrupted reference run of a tiny recipe (W1.4 A1.4 cifar_fc4, widths 8/16/16,
2 epochs of 6 steps, a checkpoint every 2 steps, 192 train / 64 test images), then ``N``
trials, each in a fresh run directory: start the same command, SIGKILL it at a point
picked by the trial's plan (deterministic given ``--seed``), then ``hbnn train --resume RUN``
until it completes (if ``--resume`` refuses a directory without ``config.yaml``, the
recipe plus ``--resume`` and then a plain restart are tried; the path taken is reported).

Kill points are progress events, not wall-clock guesses, so a loaded machine still gets
``N`` actual kills: every file a run writes goes through :func:`hbnn.io.atomic_open`
(temporary sibling, fsync, ``os.replace``). The run is started through this script
(``--child PLAN -- ARGS``), which wraps ``os.replace`` and logs each rename into the run
directory as an event ``(file name, n-th time)``; the reference run records the event
list (``run.json``, ``config.yaml``, ``metrics.csv``, ``best.*``, ``last.*``, ...) and the
time of the first one. A trial's plan is one of (``i`` mod 4):

- ``startup``: SIGKILL after a random delay in ``[0, 0.9 t_first)`` from the child's start
  (``t_first``: the reference's first event);
- ``early_event``: SIGKILL right ``before`` (the temporary file is complete, not yet
  renamed) or ``after`` a random event up to the first checkpoint's ``last.json``;
- ``event``: the same at any event;
- ``random``: a timer started at a random event fires after a random part of the gap to
  the next reference event.

So at least half the trials die before or during the first checkpoint. The process
SIGKILLs itself (same state as an outside kill: no handler, no flush). A trial whose run
finishes before its kill point is retried (up to 4 attempts) with an earlier point (a
third of the delay, or the event at half the index). After the kill the run directory
is listed and the phase recorded (:func:`observe`): ``no_dir``, ``empty_dir``,
``run_json_write``, ``after_run_json``, ``config_write``, ``first_epoch``,
``first_ckpt_write`` (a first checkpoint file or temporary exists, ``last.json`` does not
yet), ``ckpt_write`` (a later checkpoint's temporary file), ``between_ckpts``.

Each completed trial must match the reference bit for bit: every tensor of
``last.safetensors`` and ``best.safetensors`` (model, optimizer, scheduler), the position
and metrics in their metadata (run identity, wall time and the run directory excluded),
``metrics.csv`` without timing columns; and no ``*.tmp`` file may be left in the run
directory. Prints a JSON summary (actual kills, kills by phase, kills before or during
the first checkpoint); exits 1 on a trial that was not killed, a mismatch, a failed
resume or a leftover file.
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
import threading
import time
from collections import Counter
from pathlib import Path

__all__ = ["PLANS", "EARLY_PHASES", "train_args", "observe", "compare_runs", "plan_trial", "run_trial",
           "run_kills", "main"]

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
PLANS = ("startup", "early_event", "event", "random")
#: phases (:func:`observe`) before or during the first checkpoint
EARLY_PHASES = ("no_dir", "empty_dir", "run_json_write", "after_run_json", "config_write", "first_epoch",
                "first_ckpt_write")
_TIMING = {"images_per_s", "wall_time_s"}
#: metadata that differs between two runs of one config by design
_IDENTITY = {"run_id", "wall_time_s", "header_sha256", "sha256", "file"}
_ATTEMPTS = 4


def train_args(data_dir: Path, out: Path) -> list[str]:
    """``hbnn train`` arguments of the tiny run (12 steps, a checkpoint every 2)."""
    return ["train", "src/hbnn/recipes/fashion_mnist/w1.4a1.4.yaml", "--data-dir", str(data_dir), "--out", str(out),
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


# ----------------------------------------------------------------------------- the child (a tripwired hbnn train)

def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _timer(delay: float) -> None:
    t = threading.Timer(delay, _die)
    t.daemon = True
    t.start()


def child(plan: dict, argv: list[str]) -> int:
    """Run ``hbnn`` ``argv`` with ``os.replace`` wrapped: log events into the run dir, die at the plan's point.

    ``plan``: ``{"run": DIR, "log": FILE}`` (record ``name nth seconds`` lines) and/or
    ``{"delay": s}`` (timer from now), ``{"event": [name, nth], "where": "before"|"after",
    "after_s": s}`` (die at the event, or start a timer there).
    """
    t0 = time.monotonic()
    if "delay" in plan:
        _timer(plan["delay"])
    from hbnn.cli import main as cli_main

    run, seen, real = os.path.realpath(plan["run"]), Counter(), os.replace
    log = open(plan["log"], "a") if plan.get("log") else None

    def arm(when: str, name: str) -> None:
        if plan.get("event") == [name, seen[name]] and plan.get("where") == when:
            _timer(plan["after_s"]) if plan.get("after_s") else _die()

    def replace(src, dst, *args, **kwargs):
        name = os.path.basename(dst)
        ours = os.path.realpath(os.path.dirname(os.path.abspath(dst))) == run
        if ours:
            seen[name] += 1
            if log:
                log.write(f"{name} {seen[name]} {time.monotonic() - t0:.4f}\n")
                log.flush()
            arm("before", name)
        real(src, dst, *args, **kwargs)
        if ours:
            arm("after", name)

    os.replace = replace
    return cli_main(argv)


# ----------------------------------------------------------------------------- one trial

def observe(run: Path) -> str:
    """The phase a killed run is in, from its directory listing (see the module docstring)."""
    if not run.is_dir():
        return "no_dir"
    names = set(os.listdir(run))
    tmp = {n for n in names if n.endswith(".tmp")}
    ckpt_tmp = any(n.startswith((".last.", ".best.")) for n in tmp)
    if "last.json" in names:  # written last: a whole first checkpoint exists
        return "ckpt_write" if ckpt_tmp else "between_ckpts"
    if ckpt_tmp or any(n.startswith(("best.", "last.")) for n in names):
        return "first_ckpt_write"
    if "config.yaml" in names:
        return "first_epoch"
    if "run.json" in names:
        return "config_write" if tmp else "after_run_json"
    return "run_json_write" if tmp else "empty_dir"


def _spawn(cmd: list[str], plan: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(plan), "--", *cmd],
                            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill(cmd: list[str], run: Path, plan: dict) -> dict:
    proc = _spawn(cmd, dict(plan, run=str(run)))
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    at = round(time.monotonic() - t0, 3)
    if proc.returncode != -signal.SIGKILL:
        lines = [ln for ln in (err or "").splitlines() if ln.strip()]
        return {"killed": False, "phase": "finished", "at_s": at, "rc": proc.returncode,
                "stderr": lines[-1][:300] if lines else ""}
    return {"killed": True, "phase": observe(run), "at_s": at}


def plan_trial(i: int, seed: int, ref: dict) -> dict:
    """The kill plan of trial ``i`` (``Random(f"{seed}/{i}")``, the reference's events; see the module docstring)."""
    rng = random.Random(f"{seed}/{i}")
    kind, events = PLANS[i % len(PLANS)], ref["events"]
    if kind == "startup":
        return {"plan": kind, "delay": round(rng.uniform(0.0, 0.9 * ref["t_first"]), 3)}
    first = next(k for k, e in enumerate(events) if e[0] == "last.json")
    k = rng.randrange(first + 1 if kind == "early_event" else len(events))
    plan = {"plan": kind, "event": list(events[k][:2]), "where": rng.choice(("before", "after")), "index": k}
    if kind == "random":
        gap = (events[k + 1][2] if k + 1 < len(events) else ref["t_end"]) - events[k][2]
        plan.update(where="before", after_s=round(rng.uniform(0.0, max(gap, 0.01)), 4))
    return plan


def _earlier(plan: dict, ref: dict) -> dict:
    """The retry of a plan whose run finished first: a third of the delay, or the event at half the index."""
    if "delay" in plan:
        return dict(plan, delay=round(plan["delay"] / 3, 4))
    k = plan["index"] // 2
    return dict(plan, index=k, event=list(ref["events"][k][:2]), after_s=plan.get("after_s", 0) / 3)


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


def run_trial(i: int, seed: int, data_dir: Path, work: Path, ref_dir: Path, ref: dict) -> dict:
    """One kill (retried earlier until it lands) + resume + comparison with the reference run."""
    plan = plan_trial(i, seed, ref)
    run = work / f"trial{i}"
    cmd = train_args(data_dir, run)
    for attempt in range(_ATTEMPTS):
        shutil.rmtree(run, ignore_errors=True)
        trial = {"i": i, **plan, "attempt": attempt, **_kill(cmd, run, plan)}
        if trial["killed"]:
            break
        plan = _earlier(plan, ref)
    trial.update(_continue(cmd, run) if trial["killed"] else {"resumed": "not_killed", "errors": []})
    leftovers = sorted(str(p.relative_to(run)) for p in run.rglob("*.tmp")) if run.exists() else []
    trial["leftover_tmp"] = leftovers
    trial["mismatch"] = compare_runs(ref_dir, run) if trial["resumed"] else ["did not complete"]
    trial["ok"] = trial["killed"] and not trial["mismatch"] and not leftovers
    shutil.rmtree(run, ignore_errors=True) if trial["ok"] else None
    return trial


def _reference(data_dir: Path, ref_dir: Path) -> dict:
    """Run the reference through the logging child: ``{"events", "t_first", "t_end"}`` or ``{"error"}``."""
    log = ref_dir.with_name("reference-events.log")
    log.unlink(missing_ok=True)
    t0 = time.monotonic()
    proc = _spawn(train_args(data_dir, ref_dir), {"run": str(ref_dir), "log": str(log)})
    _, err = proc.communicate(timeout=900)
    t_end = time.monotonic() - t0
    if proc.returncode != 0 or not log.exists():
        return {"error": f"reference run failed ({proc.returncode}): {(err or '').strip()[-500:]}"}
    events = [(name, int(nth), float(t)) for name, nth, t in (ln.split() for ln in log.read_text().splitlines())]
    if not any(e[0] == "last.json" for e in events):
        return {"error": f"reference run wrote no checkpoint: events {events}"}
    return {"events": events, "t_first": events[0][2], "t_end": round(t_end, 3)}


def _fabricated(work: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fuzz_originals import fabricate_dataset

    return fabricate_dataset(work / "data", n_train=192)


def run_kills(n: int, seed: int = 0, data_dir: Path | None = None, work: Path | None = None,
              progress: bool = False) -> dict:
    """The reference run and ``n`` trials; the JSON summary (see the module docstring)."""
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="hbnn-kill-")) if owned else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        data_dir = Path(data_dir) if data_dir else (FMNIST if FMNIST.is_dir() else _fabricated(work))
        ref_dir = work / "reference"
        shutil.rmtree(ref_dir, ignore_errors=True)
        ref = _reference(data_dir, ref_dir)
        if "error" in ref:
            return {**ref, "exit": 3}
        trials = []
        for i in range(n):
            trials.append(run_trial(i, seed, data_dir, work, ref_dir, ref))
            if progress:
                t = trials[-1]
                print(f"trial {i}: {t['plan']} {t.get('event', t.get('delay'))} -> {t['phase']} at {t['at_s']}s "
                      f"(attempt {t['attempt']}), resumed {t['resumed']}, "
                      f"{'ok' if t['ok'] else 'FAIL ' + str(t['mismatch'] + t['leftover_tmp'] + t['errors'])}",
                      file=sys.stderr, flush=True)
        killed = [t for t in trials if t["killed"]]
        failed = [t for t in trials if not t["ok"]]
        return {"seed": seed, "n": n, "data_dir": str(data_dir), "elapsed_s": round(time.monotonic() - t0, 1),
                "reference": {"events": len(ref["events"]), "t_first": ref["t_first"], "t_end": ref["t_end"]},
                "killed": len(killed),
                "killed_before_or_during_first_checkpoint": sum(t["phase"] in EARLY_PHASES for t in killed),
                "kills_by_phase": dict(Counter(t["phase"] for t in killed)),
                "kills_by_plan": dict(Counter(t["plan"] for t in killed)),
                "retried": sum(t["attempt"] > 0 for t in trials),
                "resumed_via": dict(Counter(str(t["resumed"]) for t in trials)),
                "bit_identical": sum(t["killed"] and not t["mismatch"] for t in trials),
                "leftover_tmp": sum(len(t["leftover_tmp"]) for t in trials),
                "failures": failed, "trials": trials, "exit": 1 if failed else 0}
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(json.loads(argv[1]), argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, nargs="?", default=20, help="number of kills")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", help=f"Fashion-MNIST folder (default {FMNIST}, else fabricated data)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--out", help="also write the JSON summary (with every trial) here")
    args = ap.parse_args(argv)
    summary = run_kills(args.n, args.seed, args.data_dir, args.work, progress=True)
    text = json.dumps({k: v for k, v in summary.items() if k != "trials"}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary["exit"]


if __name__ == "__main__":
    sys.exit(main())
