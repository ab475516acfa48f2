"""Result files: one JSON object per line, one line per finished run (``results/<experiment>.jsonl``).

Schema (``schema`` 1) of a training run's line::

    schema, kind ("train"), experiment, figure, point, run ("<experiment>/<point>/seed<k>"),
    seed, spec (the point's YAML mapping, plus ``layer_plan`` for layer-level points),
    config (the resolved run config), config_sha, top1, top5, loss (final epoch, test split,
    accuracies in [0, 1]), best_top1, weight_bits, act_bits (realized model averages; 32 =
    float), params, binarized_params, stored_bytes, epochs, wall_s, run_dir,
    hardware {cpu, cores, threads, device, torch, python, platform}, hbnn_version, date (UTC)

and, when hbnn runs from a git checkout, ``git_commit`` (the HEAD commit, with ``+dirty``
when ``src/`` has uncommitted changes), so a number can be traced to the code that made it.

``fig2a`` lines share the bookkeeping keys and carry ``heuristic``, ``avg_bits``, ``mix``,
``error`` and ``paper`` instead of the accuracy keys (see :mod:`hbnn.experiments.fig2a`).

Appending is a read-modify-write through :func:`hbnn.io.atomic_write_text` while holding
an exclusive ``flock`` on the results folder, so a crash never leaves a torn line and two
sweeps writing the same file never lose each other's lines. When a run appears more than
once (its config changed, or it was re-run), the last line wins (:func:`latest`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from hbnn.errors import FormatError
from hbnn.io import atomic_write_text, read_jsonl

__all__ = [
    "SCHEMA",
    "TRAIN_KEYS",
    "default_results_path",
    "read_results",
    "append_result",
    "latest",
    "done_index",
    "hardware_info",
    "git_commit",
    "bookkeeping",
    "clean_json",
]

SCHEMA = 1
#: Keys every training line has (tests check the schema against this).
TRAIN_KEYS = ("schema", "kind", "experiment", "figure", "point", "run", "seed", "spec", "config",
              "config_sha", "top1", "top5", "loss", "best_top1", "weight_bits", "act_bits", "params",
              "binarized_params", "stored_bytes", "epochs", "wall_s", "run_dir", "hardware",
              "hbnn_version", "date")


def default_results_path(experiment: str) -> Path:
    """``results/<experiment>.jsonl``."""
    return Path("results") / f"{experiment}.jsonl"


def read_results(path: str | os.PathLike) -> list[dict]:
    """All lines of a results file (a missing file has none).

    Raises:
        FormatError: a line is not a JSON object (names the file and line).
    """
    path = Path(path)
    if not path.exists():
        return []
    out = read_jsonl(path, FormatError)
    for number, line in enumerate(out, 1):
        if "run" not in line:
            raise FormatError(f"{path}: record {number}: expected a JSON object with a 'run' key")
    return out


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``folder`` (POSIX ``flock``; no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def clean_json(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def append_result(path: str | os.PathLike, line: Mapping[str, Any]) -> None:
    """Append one result line to ``path`` atomically (creates the file and its folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(clean_json(dict(line)), allow_nan=False, separators=(", ", ": "))
    with _locked(path.parent):
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(path, old + text + "\n")


def latest(lines: Iterable[Mapping[str, Any]]) -> list[dict]:
    """One line per run name, the last one in file order, in order of first appearance."""
    by_run: dict[str, dict] = {}
    for line in lines:
        by_run[line["run"]] = dict(line)
    return list(by_run.values())


def done_index(lines: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """``{(run, config_sha)}`` of every finished run in ``lines``."""
    return {(line["run"], line.get("config_sha", "")) for line in lines}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.lower().startswith("model name"):
                return text.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def hardware_info(device: str = "cpu") -> dict:
    """Where a result was produced: CPU model, cores, torch threads, device, versions.

    Args:
        device: ``cpu`` or a CUDA device string (its name is looked up).
    """
    import torch

    name = str(device)
    if name.startswith("cuda") and torch.cuda.is_available():
        name = f"{name} ({torch.cuda.get_device_name(torch.device(name))})"
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": name, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The git commit of the checkout hbnn is imported from (``+dirty`` if ``src/`` differs), or None."""
    src = Path(__file__).resolve().parents[2]
    repo = src.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--", str(src)],
                               capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def bookkeeping(run: Any, device: str = "cpu") -> dict:
    """The keys every result line starts with, for a :class:`hbnn.experiments.spec.RunSpec`."""
    import hbnn

    return {"schema": SCHEMA, "kind": run.kind, "experiment": run.experiment, "figure": run.figure,
            "point": run.point, "run": run.name, "seed": run.seed, "spec": run.spec,
            "config": run.config, "config_sha": run.sha, "hardware": hardware_info(device),
            "hbnn_version": hbnn.__version__, "git_commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
