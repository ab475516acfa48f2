"""The sweep runner: expand an experiment, skip finished runs, resume interrupted ones.

For each run (``<experiment>/<point>/seed<k>``) the state is

* ``done``: the results file has a line with this run name *and* config hash -> skipped;
* ``resume``: its run directory holds a checkpoint -> ``fit(..., resume=True)`` continues
  exactly where it stopped (a run that finished training but has no line yet just gets
  measured and recorded);
* ``restart``: its run directory exists without a checkpoint (killed in the first epoch)
  -> started over in place;
* ``new``: nothing yet.

Run directories are ``<runs_dir>/<experiment>/<point>/seed<k>-<sha8>``, so changing an
experiment's config never resumes a run trained under another config. After each run one
line is appended to the results file (:mod:`hbnn.experiments.results`); an interrupted
sweep loses at most the epoch in progress.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from hbnn.experiments.kinds import kind_of
from hbnn.experiments.results import append_result, read_results
from hbnn.experiments.spec import RunSpec
from hbnn.progress import eta_seconds, format_duration

__all__ = ["RunStatus", "select_runs", "run_status", "execute_run", "sweep", "rerun", "verify"]

STATES = ("done", "resume", "restart", "new")


@dataclass
class RunStatus:
    """A run and what the sweep will do with it (``state`` in :data:`STATES`)."""

    run: RunSpec
    state: str
    detail: str = ""
    line: dict | None = None


def select_runs(runs: Iterable[RunSpec], only: Iterable[str] = ()) -> list[RunSpec]:
    """Runs whose point name or run name matches one of the ``only`` patterns (fnmatch); all if none.

    ``--only w1.4_mo`` selects every seed of that point, ``--only 'w1.4_*'`` several
    points, ``--only w1.4_mo/seed1`` (or the full run name) a single run.
    """
    patterns = list(only)
    if not patterns:
        return list(runs)

    def hit(run: RunSpec) -> bool:
        names = (run.point, run.name, f"{run.point}/seed{run.seed}")
        return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)

    return [r for r in runs if hit(r)]


def _checkpoint_epoch(run_dir: Path) -> str:
    import json

    try:
        meta = json.loads((run_dir / "last.json").read_text(encoding="utf-8"))
        return f"epoch {meta.get('epoch')}/{meta.get('config', {}).get('train', {}).get('epochs')}"
    except (OSError, ValueError, AttributeError):
        return "checkpoint"


def run_status(runs: Iterable[RunSpec], lines: Iterable[Mapping[str, Any]], runs_dir: str | Path) -> list[RunStatus]:
    """The state of every run given the results file's lines and the runs folder."""
    by_key = {(line["run"], line.get("config_sha")): dict(line) for line in lines}
    names = {key[0] for key in by_key}
    out = []
    for run in runs:
        line = by_key.get((run.name, run.sha))
        if line is not None:
            out.append(RunStatus(run, "done", _done_detail(line), line))
            continue
        note = " (recorded under another config)" if run.name in names else ""
        run_dir = run.run_dir(runs_dir)
        trains = kind_of(run.kind).trains
        if trains and (run_dir / "last.safetensors").exists():
            out.append(RunStatus(run, "resume", _checkpoint_epoch(run_dir) + note))
        elif trains and run_dir.exists() and any(run_dir.iterdir()):
            out.append(RunStatus(run, "restart", "no checkpoint yet" + note))
        else:
            out.append(RunStatus(run, "new", note.strip()))
    return out


def _done_detail(line: Mapping[str, Any]) -> str:
    return kind_of(line.get("kind", "train")).detail(line)


def execute_run(status: RunStatus, runs_dir: str | Path, *, quiet: bool = True, cache: dict | None = None) -> dict:
    """Run (or resume) one run by its kind's executor and return its result line (not yet written)."""
    return kind_of(status.run.kind).execute(status.run, runs_dir, state=status.state, quiet=quiet, cache=cache)


def sweep(runs: Iterable[RunSpec], results: str | Path, runs_dir: str | Path, *, dry_run: bool = False,
          quiet: bool = True, echo: Callable[[str], None] = print) -> list[RunStatus]:
    """Run every run that is not done, appending one result line per finished run.

    Args:
        runs: the (selected) runs of one experiment.
        results: the results file.
        runs_dir: the root of the run directories.
        dry_run: only report the states.
        quiet: no per-epoch output from training.
        echo: where progress lines go: a line as each run starts, and one as it finishes with
            its time, the sweep's elapsed time and an ETA (mean time per finished run times
            the runs left).

    Returns:
        The states found before running.
    """
    statuses = run_status(runs, read_results(results), runs_dir)
    counts = {s: sum(1 for x in statuses if x.state == s) for s in STATES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    echo(f"{len(statuses)} runs ({summary or 'none'}) -> {results}")
    todo = [s for s in statuses if s.state != "done"]
    if dry_run:
        for s in statuses:
            extra = s.run.spec.get("layer_average")
            extra = "" if extra is None or s.state == "done" else f"layer-level average {extra:.3f} "
            echo(f"  {s.state:<8} {s.run.name:<40} {extra}{s.detail}".rstrip())
        return statuses
    cache: dict = {}
    start = time.perf_counter()
    for index, status in enumerate(todo, 1):
        echo(f"[{index}/{len(todo)}] {status.run.name}: starting ({status.state}"
             + (f", {status.detail}" if status.detail else "") + ")")
        t0 = time.perf_counter()
        line = execute_run(status, runs_dir, quiet=quiet, cache=cache)
        append_result(results, line)
        now = time.perf_counter()
        left = len(todo) - index
        eta = f", ETA {format_duration(eta_seconds(index, len(todo), now - start))} for {left} left" if left else ""
        echo(f"[{index}/{len(todo)}] {status.run.name}: {_done_detail(line)} "
             f"({status.state}, {now - t0:.1f} s; sweep elapsed {format_duration(now - start)}{eta})")
    return statuses


def rerun(line: Mapping[str, Any], run_dir: str | Path, *, quiet: bool = True) -> dict:
    """Train a recorded run again from its recorded config into ``run_dir`` (started over).

    CPU float reductions depend on the number of threads (and binarization turns tiny
    differences into sign flips), so the re-run uses the recorded ``hardware.threads``.

    Returns:
        ``{"run", "top1", "top5", "recorded_top1", "recorded_top5", "threads", "same"}``;
        ``same`` is exact equality of both accuracies.
    """
    import torch

    from hbnn.train.config import config_from_dict
    from hbnn.train.run import fit

    run_dir = Path(run_dir)
    overwrite = run_dir.exists() and (run_dir / "config.yaml").exists()
    previous = torch.get_num_threads()
    threads = int((line.get("hardware") or {}).get("threads") or previous)
    torch.set_num_threads(threads)
    try:
        result = fit(config_from_dict(line["config"]), run_dir, overwrite=overwrite, quiet=quiet)
    finally:
        torch.set_num_threads(previous)
    same = result.get("top1") == line.get("top1") and result.get("top5") == line.get("top5")
    return {"run": line["run"], "top1": result.get("top1"), "top5": result.get("top5"),
            "recorded_top1": line.get("top1"), "recorded_top5": line.get("top5"), "threads": threads,
            "same": same}


def verify(statuses: Iterable[RunStatus], runs_dir: str | Path, *, quiet: bool = True,
           echo: Callable[[str], None] = print) -> bool:
    """Re-run every finished training run in ``statuses`` from its recorded config and compare.

    Re-runs go to ``<runs_dir>/_verify/<run>``. Returns True when every accuracy matched exactly.
    """
    ok = True
    for status in statuses:
        if status.state != "done" or status.line is None or not kind_of(status.run.kind).trains:
            continue
        out = rerun(status.line, Path(runs_dir) / "_verify" / status.run.name, quiet=quiet)
        ok &= out["same"]
        echo(f"{out['run']}: recorded top1 {out['recorded_top1']!r}, re-run {out['top1']!r} "
             f"({out['threads']} threads) -> {'same' if out['same'] else 'DIFFERENT'}")
    return ok
