"""Run directories: where a run goes, and the resume / overwrite / "already exists" policy.

Two steps, both called by ``hbnn train`` (and usable by sweeps):

1. :func:`plan_run` -- the config and directory of a new run (recipe + overrides, default
   ``runs/<recipe>``), or of a resumed one (the run's saved ``config.yaml`` plus
   overrides, of which only :data:`RESUMABLE_KEYS` may change anything);
2. :func:`prepare_run_dir` -- called by :func:`hbnn.train.run.fit` once the model and
   data are built: check the directory and create it, clear it (``overwrite``) or insist
   on a checkpoint to continue from (``resume``).

Errors are the CLI's one-liners: :class:`hbnn.errors.ConfigError`,
:class:`hbnn.errors.CheckpointError` or ``FileExistsError``, naming the flag to use.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from hbnn.errors import CheckpointError, ConfigError
from hbnn.train.config import Config, config_to_dict, load_config, load_yaml_recipe, resolve_recipe

__all__ = [
    "RUN_FILES",
    "RESUMABLE_KEYS",
    "default_run_dir",
    "check_resume_changes",
    "plan_run",
    "prepare_run_dir",
]

#: What a run directory holds; ``--overwrite`` removes exactly these.
RUN_FILES = ("config.yaml", "metrics.csv", "last.safetensors", "last.json", "best.safetensors",
             "best.json", "tb")

#: Settings that may change when resuming; anything else would break exact continuation.
#: A key ending in ``.`` covers every key under it.
RESUMABLE_KEYS = (
    "train.epochs", "train.eval_every", "train.checkpoint_every_steps", "train.log_every_steps",
    "train.device", "train.threads", "train.limit_test_batches", "train.eval_batch_size", "data.data_dir",
    "data.num_workers", "run.", "dist.",
)


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
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not any(key == k or (k.endswith(".") and key.startswith(k))
                                                for k in RESUMABLE_KEYS):
            raise ConfigError(f"cannot change {key} when resuming ({a.get(key)!r} -> {b.get(key)!r}); "
                              "start a new run with --out instead")


def plan_run(recipe: str | os.PathLike | None, overrides: Iterable[str] = (), *, out: str | None = None,
             resume: str | os.PathLike | None = None, overwrite: bool = False) -> tuple[Config, Path]:
    """The config and run directory of ``hbnn train [RECIPE] [--out OUT] [--resume RUN_DIR]``.

    Args:
        recipe: a recipe path or name (:func:`hbnn.train.config.resolve_recipe`), or None
            (defaults only); must be None with ``resume``.
        overrides: ``key=value`` strings applied on top (``--set`` and the shortcut flags).
        out: the run directory (``--out``); default :func:`default_run_dir` (or ``run.out``).
        resume: continue the run in this directory with its saved config plus ``overrides``.
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
    if resume is None:
        path = resolve_recipe(recipe) if recipe is not None else None
        cfg = load_config(path, overrides)
        return cfg, Path(cfg.run.out) if cfg.run.out else default_run_dir(path, cfg.model.name, cfg.data.name)
    if recipe is not None:
        raise ConfigError("--resume takes the config from RUN_DIR/config.yaml; drop the recipe argument")
    if overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    run_dir = Path(resume)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"cannot resume: {run_dir} is not an hbnn run directory (no config.yaml)")
    saved = load_yaml_recipe(run_dir / "config.yaml")
    overrides = [o for o in overrides if not o.startswith("run.out=")]
    cfg = load_config(None, overrides, base=saved)
    check_resume_changes(config_to_dict(load_config(None, (), base=saved)), config_to_dict(cfg))
    if out is not None and Path(out).resolve() != run_dir.resolve():
        raise ConfigError(f"--out {out} differs from --resume {run_dir}; drop --out")
    return cfg, run_dir


def prepare_run_dir(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Check (and create or clear) the run directory.

    Args:
        out: the run directory.
        resume: continue the run in ``out`` (it must hold ``last.safetensors``).
        overwrite: start over in an existing run directory (its run files are deleted).

    Raises:
        FileExistsError: ``out`` exists and is not empty, without ``--resume``/``--overwrite``,
            or ``--overwrite`` on a folder that is not an hbnn run directory.
        CheckpointError: ``resume`` but there is no checkpoint.
    """
    out = Path(out)
    if resume:
        if not (out / "last.safetensors").exists():
            raise CheckpointError(f"cannot resume: {out} holds no checkpoint (last.safetensors)")
        return out
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"run directory {out} exists and is not a directory; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"run directory {out} already exists; pass --resume {out} to "
                                  "continue it or --overwrite to start over")
        if not (out / "config.yaml").exists():
            raise FileExistsError(f"--overwrite refused: {out} is not an hbnn run directory "
                                  "(no config.yaml); choose another --out")
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
