"""What each experiment ``kind`` does: one table, ``{kind: Kind(expand, execute, detail, trains)}``.

* ``train``: points x seeds of training runs (:func:`hbnn.experiments.spec.expand_train`),
  each trained (or resumed) with :func:`hbnn.train.run.fit` and measured from its last
  checkpoint;
* ``fig2a``: the approximation-error study (:mod:`hbnn.experiments.fig2a`), no training.

:mod:`hbnn.experiments.spec` reads the YAML and knows the kind names
(:data:`~hbnn.experiments.spec.KINDS`); this module, above it and above
:mod:`~hbnn.experiments.fig2a`, maps them to behaviour, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from hbnn.experiments.fig2a import expand_fig2a, fig2a_detail, run_fig2a
from hbnn.experiments.results import bookkeeping
from hbnn.experiments.spec import Experiment, RunSpec, expand_train

__all__ = ["Kind", "KIND_TABLE", "kind_of", "expand"]


@dataclass(frozen=True)
class Kind:
    """The behaviour of one experiment kind.

    Attributes:
        expand: ``(exp, *, seeds, overrides) -> [RunSpec]``.
        execute: ``(run, runs_dir, *, state, quiet, cache) -> result line`` (not yet written);
            ``state`` is the runner's state (``resume``, ``restart``, ``new``).
        detail: ``result line -> short text`` for progress output.
        trains: runs have run directories with checkpoints (resumable, re-runnable by ``--verify``).
    """

    expand: Callable[..., list[RunSpec]]
    execute: Callable[..., dict]
    detail: Callable[[Mapping[str, Any]], str]
    trains: bool


def _measure(run_dir: Path) -> dict:
    """Realized bits, sizes and wall time of a finished run, from its last checkpoint."""
    from hbnn.train.checkpoint import load_checkpoint
    from hbnn.train.evaluation import summary_for

    _, summary = summary_for(str(run_dir / "last.safetensors"))
    meta = load_checkpoint(run_dir, "last").metadata
    m = summary["model"]
    return {"weight_bits": m["avg_weight_bits"], "act_bits": m["avg_act_bits"], "params": m["params"],
            "binarized_params": m["binarized_params"], "stored_bytes": m["stored_bytes"],
            "epochs": meta.get("epoch"), "wall_s": meta.get("wall_time_s")}


def _execute_train(run: RunSpec, runs_dir: str | Path, *, state: str, quiet: bool = True,
                   cache: dict | None = None) -> dict:
    from hbnn.train.config import config_from_dict
    from hbnn.train.distributed import resolve_device
    from hbnn.train.run import fit

    cfg = config_from_dict(run.config)
    run_dir = run.run_dir(runs_dir)
    result = fit(cfg, run_dir, resume=state == "resume", overwrite=state == "restart", quiet=quiet)
    line = bookkeeping(run, str(resolve_device(cfg.train.device)))
    line.update(top1=result.get("top1"), top5=result.get("top5"), loss=result.get("loss"),
                best_top1=result.get("best_metric"))
    line.update(_measure(run_dir))
    line["run_dir"] = str(run_dir)
    return line


def _train_detail(line: Mapping[str, Any]) -> str:
    top1 = line.get("top1")
    return "top1 n/a" if top1 is None else f"top1 {100 * top1:.2f}%"


def _execute_fig2a(run: RunSpec, runs_dir: str | Path, *, state: str, quiet: bool = True,
                   cache: dict | None = None) -> dict:
    return {**bookkeeping(run), **run_fig2a(run, cache)}


KIND_TABLE: dict[str, Kind] = {
    "train": Kind(expand=expand_train, execute=_execute_train, detail=_train_detail, trains=True),
    "fig2a": Kind(expand=expand_fig2a, execute=_execute_fig2a, detail=fig2a_detail, trains=False),
}


def kind_of(name: str) -> Kind:
    """The :class:`Kind` of a kind name (a run's or a result line's ``kind``; default ``train``)."""
    return KIND_TABLE[name or "train"]


def expand(exp: Experiment, *, seeds: Iterable[int] | None = None, overrides: Iterable[str] = ()) -> list[RunSpec]:
    """All runs of an experiment, by its kind's expander.

    Args:
        exp: a loaded experiment.
        seeds: replaces every point's seeds (the ``--seeds`` flag).
        overrides: ``key=value`` strings applied to every run (the ``--set`` flag).

    Raises:
        ConfigError: the experiment resolves to invalid runs.
    """
    return KIND_TABLE[exp.kind].expand(exp, seeds=seeds, overrides=overrides)
