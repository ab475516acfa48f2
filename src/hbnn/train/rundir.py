"""Run directories: where a run goes, its identity, and the resume / overwrite / "already exists" policy.

Three steps, called by ``hbnn train`` (and usable by sweeps):

1. :func:`plan_run` -- the config and directory of a new run (recipe + overrides, default
   ``runs/<recipe>``), or of a resumed one (the run's saved ``config.yaml`` plus
   overrides, of which only :data:`RESUMABLE_KEYS` may change anything; with a recipe,
   the recipe's config must agree with the saved one the same way);
2. :func:`has_checkpoint` and :func:`load_run_checkpoint` -- whether a resumed run
   continues from ``last`` and that checkpoint, verified to belong to the run;
3. :func:`prepare_run_dir` -- called by :func:`hbnn.train.run.fit` once the model and
   data are built: check the directory and create it, clear it (``overwrite``) or keep
   it (``resume``); remove stale temporary files; write ``run.json``.

A run is started in this order: ``run.json`` (the run identity: a random ``run_id``,
sealed like every hbnn header), ``config.yaml``, ``metrics.csv``, then checkpoints, each
written atomically (:mod:`hbnn.io`). So a run killed at any moment is in one of these
states (:func:`run_state`), and ``hbnn train ... --resume`` continues each:

- ``new``: no directory, an empty one, or only ``run.json`` and temporary files (killed
  before or while writing ``config.yaml``): not started; it starts now;
- ``started``: ``config.yaml`` but no checkpoint (killed in the first epoch): it starts
  again from step 0 with that config, which ends bit-identical to an uninterrupted run;
- ``checkpointed``: ``last.safetensors`` exists: it continues from there.

Every checkpoint carries the ``run_id`` of the run that wrote it: a checkpoint in a run
directory whose ``run_id`` or (non-resumable) config differs from the run's is refused
(:func:`load_run_checkpoint`), by ``train --resume``, ``eval``, ``summary`` and ``export``.
Stale temporary files (``.<name>.<8 hex>.tmp`` of a run file, left by a killed atomic
write) are removed when a run starts or resumes, and reported in one line.

Errors are the CLI's one-liners: :class:`hbnn.errors.ConfigError`,
:class:`hbnn.errors.CheckpointError` or ``FileExistsError``, naming the flag to use.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from hbnn.errors import CheckpointError, ConfigError
from hbnn.io import HEADER_DIGEST, atomic_write_json, header_sha256, seal_header
from hbnn.train.checkpoint import RUN_ID_PATTERN, Checkpoint, checkpoint_paths, load_checkpoint
from hbnn.train.config import (
    Config,
    config_from_dict,
    config_to_dict,
    load_config,
    resolve_recipe,
)
from hbnn.train.recipes import load_yaml_recipe

__all__ = [
    "RUN_FILE",
    "RUN_FILES",
    "RESUMABLE_KEYS",
    "PreparedRun",
    "default_run_dir",
    "check_resume_changes",
    "plan_run",
    "read_run_id",
    "run_state",
    "stale_temp_files",
    "has_checkpoint",
    "load_run_checkpoint",
    "prepare_run_dir",
]

#: The run identity file: ``{"format": "hbnn-run", "schema_version": 1, "run_id", "header_sha256"}``.
RUN_FILE = "run.json"
_RUN_FORMAT = "hbnn-run"

#: What a run directory holds; ``--overwrite`` removes exactly these.
RUN_FILES = (RUN_FILE, "config.yaml", "metrics.csv", "last.safetensors", "last.json", "best.safetensors",
             "best.json", "calibrated.safetensors", "calibrated.json", "tb")

#: Checkpoint halves, as (name, suffix).
_CHECKPOINT_FILES = ("last.safetensors", "last.json", "best.safetensors", "best.json")

#: A temporary file of an atomic write of a run file (hbnn.io: ``.<name>.<8 hex>.tmp``).
_TEMP = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")

#: Settings that may change when resuming; anything else would break exact continuation.
#: A key ending in ``.`` covers every key under it.
RESUMABLE_KEYS = (
    "train.epochs", "train.eval_every", "train.checkpoint_every_steps", "train.log_every_steps",
    "train.device", "train.threads", "train.limit_test_batches", "train.eval_batch_size", "data.data_dir",
    "data.num_workers", "run.", "dist.",
)


class PreparedRun(NamedTuple):
    """What :func:`prepare_run_dir` did: the run's identity and the stale temporary files it removed."""

    run_id: str
    removed: tuple[str, ...]


def default_run_dir(recipe: Path | None, model: str, dataset: str) -> Path:
    """``runs/<recipe folder>-<recipe stem>``, or ``runs/<model>-<dataset>`` without a recipe."""
    if recipe is None:
        return Path("runs") / f"{model}-{dataset}"
    parent = recipe.resolve().parent.name
    stem = recipe.stem
    return Path("runs") / (f"{parent}-{stem}" if parent not in ("configs", "") else stem)


def _flatten(data: Any, prefix: str = "") -> dict:
    if isinstance(data, dict) and data:
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _is_resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


def _changed_key(old: dict, new: dict) -> tuple[str, Any, Any] | None:
    """The first ``(key, old value, new value)`` that differs outside :data:`RESUMABLE_KEYS`, or None."""
    a, b = _flatten(old), _flatten(new)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not _is_resumable(key):
            return key, a.get(key), b.get(key)
    return None


def check_resume_changes(old: dict, new: dict) -> None:
    """Refuse a resumed config that differs from the saved one outside :data:`RESUMABLE_KEYS`.

    Args:
        old, new: the saved and the resumed config as plain dicts (``config_to_dict``).

    Raises:
        ConfigError: a non-resumable key changed, or ``train.epochs`` of a cosine schedule.
    """
    a, b = _flatten(old), _flatten(new)
    if b.get("sched.name") == "cosine" and a.get("train.epochs") != b.get("train.epochs"):
        raise ConfigError("cannot change train.epochs when resuming a cosine schedule (its length is fixed "
                          "when the run starts); start a new run with --out instead")
    changed = _changed_key(old, new)
    if changed is not None:
        key, before, after = changed
        raise ConfigError(f"cannot change {key} when resuming ({before!r} -> {after!r}); "
                          "start a new run with --out instead")


def _saved_dict(run_dir: Path) -> dict:
    """``run_dir/config.yaml`` as written, checked: an empty, non-mapping or invalid file is a
    :class:`ConfigError` naming it."""
    path = run_dir / "config.yaml"
    data = load_yaml_recipe(path)
    if not data:
        raise ConfigError(f"{path}: empty run config; restore the file, or start over with --overwrite")
    try:
        load_config(None, (), base=data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return data


def _saved_config(run_dir: Path) -> Config:
    """The config in ``run_dir/config.yaml`` (resolved, so comparable with ``config_to_dict``)."""
    return load_config(None, (), base=_saved_dict(run_dir))


def plan_run(recipe: str | os.PathLike | None, overrides: Iterable[str] = (), *, out: str | None = None,
             resume: str | os.PathLike | bool | None = None, overwrite: bool = False) -> tuple[Config, Path]:
    """The config and run directory of ``hbnn train [RECIPE] [--out OUT] [--resume [RUN_DIR]]``.

    Args:
        recipe: a recipe path or name (:func:`hbnn.train.config.resolve_recipe`), or None
            (defaults only). With ``resume`` it is optional: without it the run's saved
            ``config.yaml`` is the base; with it, the recipe plus ``overrides`` must agree
            with the saved config outside :data:`RESUMABLE_KEYS`, and a run that never got
            as far as its ``config.yaml`` (killed first) starts with the recipe's config.
        overrides: ``key=value`` strings applied on top (``--set`` and the shortcut flags).
        out: the run directory (``--out``); default :func:`default_run_dir` (or ``run.out``).
        resume: the run directory to continue, or True for the one ``out``/the recipe names
            (True without a recipe: the saved config if the run has one, else the
            command's own, defaults plus ``overrides``: the killed command, repeated).
        overwrite: start over in an existing directory (checked only against ``resume``
            here; :func:`prepare_run_dir` acts on it).

    Returns:
        ``(resolved config, run directory)``.

    Raises:
        ConfigError: conflicting arguments, no run to resume, or a non-resumable change.
    """
    overrides = list(overrides)
    if out is not None:
        overrides.append(f"run.out={json.dumps(out)}")
    if resume is not None and resume is not False and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if resume is True and recipe is None:
        if out is None:
            raise ConfigError("--resume without RUN_DIR needs --out RUN_DIR or a recipe")
        if (Path(out) / "config.yaml").is_file():
            resume = out  # the run's saved config, as with --resume RUN_DIR
    if recipe is not None or resume is None or resume is False or resume is True:
        path = resolve_recipe(recipe) if recipe is not None else None
        cfg = load_config(path, overrides)
        run_dir = Path(cfg.run.out) if cfg.run.out else default_run_dir(path, cfg.model.name, cfg.data.name)
        if resume is None or resume is False:
            return cfg, run_dir
        if resume is not True:
            _same_dir(out, Path(resume))
            run_dir = Path(resume)
        if (run_dir / "config.yaml").is_file():
            check_resume_changes(config_to_dict(_saved_config(run_dir)), config_to_dict(cfg))
        return cfg, run_dir
    run_dir = Path(resume)
    _same_dir(out, run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"cannot resume: {run_dir} is not an hbnn run directory (no config.yaml); if it was "
                          f"killed before its config was written, give its recipe: hbnn train RECIPE --out "
                          f"{run_dir} --resume")
    saved = _saved_dict(run_dir)
    overrides = [o for o in overrides if not o.startswith("run.out=")]
    cfg = load_config(None, overrides, base=saved)
    check_resume_changes(config_to_dict(load_config(None, (), base=saved)), config_to_dict(cfg))
    return cfg, run_dir


def _same_dir(out: str | None, run_dir: Path) -> None:
    if out is not None and Path(out).resolve() != run_dir.resolve():
        raise ConfigError(f"--out {out} differs from --resume {run_dir}; drop --out")


# ----------------------------------------------------------------------------- run identity and state

def _write_run_identity(out: Path) -> str:
    run_id = secrets.token_hex(16)
    atomic_write_json(out / RUN_FILE, seal_header({"format": _RUN_FORMAT, "schema_version": 1, "run_id": run_id}))
    return run_id


def read_run_id(run_dir: str | os.PathLike) -> str | None:
    """The ``run_id`` in ``run_dir/run.json``, or None when there is no such file.

    Raises:
        CheckpointError: the file is unreadable, unsealed, edited or malformed.
    """
    path = Path(run_dir) / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise CheckpointError(f"run identity {path} is unreadable or corrupt") from None
    if not isinstance(data, dict) or data.get(HEADER_DIGEST) != header_sha256(data):
        raise CheckpointError(f"run identity {path} is corrupt or was edited (header digest mismatch)")
    run_id = data.get("run_id")
    if (data.get("format") != _RUN_FORMAT or type(data.get("schema_version")) is not int
            or data["schema_version"] != 1 or not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id)):
        raise CheckpointError(f"run identity {path} is not an hbnn run file of schema version 1")
    return run_id


def _run_identity(folder: Path) -> str | None:
    """The run a checkpoint in ``folder`` must belong to; None when ``folder`` is no run directory."""
    run_id = read_run_id(folder)
    if run_id is None and (folder / "config.yaml").exists():
        raise CheckpointError(f"run directory {folder} has no {RUN_FILE} (written by an older hbnn or damaged): "
                              "its checkpoints cannot be verified as its own")
    return run_id


def stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Temporary files of killed atomic writes of run files in ``run_dir`` (``.<name>.<8 hex>.tmp``)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        match = _TEMP.fullmatch(path.name)
        if match and match["name"] in RUN_FILES and path.is_file():
            found.append(path)
    return found


def run_state(run_dir: str | os.PathLike) -> str:
    """``new``, ``started``, ``checkpointed`` or ``foreign`` (see the module docstring).

    ``foreign`` is a folder with other files and no ``config.yaml``: not an hbnn run.

    Raises:
        FileExistsError: ``run_dir`` exists and is not a directory.
    """
    folder = Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"run directory {folder} exists and is not a directory; choose another --out")
    if not folder.exists():
        return "new"
    if (folder / "config.yaml").exists():
        return "checkpointed" if (folder / "last.safetensors").exists() else "started"
    stale = set(stale_temp_files(folder))
    leftovers = [p for p in folder.iterdir() if p not in stale and p.name != RUN_FILE]
    return "foreign" if leftovers else "new"


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether a resumed run in ``run_dir`` continues from ``last`` (else it starts at step 0).

    Raises:
        CheckpointError: checkpoint files without ``last.safetensors`` (a state no kill
            leaves: the run directory was edited).
    """
    folder = Path(run_dir)
    if (folder / "last.safetensors").exists():
        return True
    present = [name for name in _CHECKPOINT_FILES if (folder / name).exists()]
    if present:
        raise CheckpointError(f"cannot resume {folder}: it holds {present[0]} but no last.safetensors; "
                              "start over with --overwrite")
    return False


def load_run_checkpoint(path: str | os.PathLike, name: str = "last", cfg: Config | None = None) -> Checkpoint:
    """:func:`hbnn.train.checkpoint.load_checkpoint`, plus: a checkpoint in a run directory is that run's.

    A checkpoint whose folder holds ``run.json`` (or ``config.yaml``) must carry the
    folder's ``run_id``, and its config must equal ``cfg`` (default: the folder's
    ``config.yaml``) outside :data:`RESUMABLE_KEYS`. A loose checkpoint file is only
    verified in itself.

    Raises:
        CheckpointError: the checks of ``load_checkpoint``, another run's checkpoint, or a
            checkpoint whose config is not the run's.
    """
    tensor_path, _ = checkpoint_paths(path, name)
    folder = tensor_path.parent
    run_id = _run_identity(folder)
    ckpt = load_checkpoint(tensor_path, run_id=run_id)
    if run_id is None or (cfg is None and not (folder / "config.yaml").exists()):
        return ckpt
    try:
        own = config_to_dict(config_from_dict(ckpt.metadata["config"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {tensor_path} has an unusable config ({str(exc).splitlines()[0]})") from None
    expected = config_to_dict(cfg if cfg is not None else _saved_config(folder))
    changed = _changed_key(own, expected)
    if changed is not None:
        key, mine, theirs = changed
        raise CheckpointError(f"checkpoint {tensor_path} is incompatible with the run in {folder}: its {key} is "
                              f"{mine!r}, the run's is {theirs!r}")
    return ckpt


def prepare_run_dir(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> PreparedRun:
    """Check (and create, clear or keep) the run directory; remove stale temporary files; write ``run.json``.

    Args:
        out: the run directory.
        resume: continue the run in ``out`` (a ``started`` run keeps its identity and
            starts at step 0; a ``new`` one just starts; see :func:`run_state`).
        overwrite: start over in an existing run directory (its run files are deleted).

    Returns:
        :class:`PreparedRun`: the run's ``run_id`` (kept when resuming, new otherwise)
        and the names of the stale temporary files removed.

    Raises:
        FileExistsError: ``out`` is not a directory; it holds a started run, without
            ``--resume``/``--overwrite``; or it is not an hbnn run directory.
    """
    out = Path(out)
    state = run_state(out)
    if state == "foreign":
        flag = "--overwrite refused" if overwrite else "cannot train there"
        raise FileExistsError(f"{flag}: {out} exists and is not an hbnn run directory (no config.yaml); "
                              "choose another --out")
    if state in ("started", "checkpointed") and not (resume or overwrite):
        raise FileExistsError(f"run directory {out} already exists; pass --resume {out} to "
                              "continue it or --overwrite to start over")
    stale = stale_temp_files(out)
    for path in stale:
        path.unlink(missing_ok=True)
    removed = tuple(p.name for p in stale)
    if state in ("started", "checkpointed") and overwrite:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if resume and state in ("started", "checkpointed"):
        run_id = read_run_id(out)
        if run_id is not None:
            return PreparedRun(run_id, removed)
        if state == "checkpointed":  # load_run_checkpoint refused this already
            raise CheckpointError(f"run directory {out} has a checkpoint but no {RUN_FILE}")
    return PreparedRun(_write_run_identity(out), removed)
