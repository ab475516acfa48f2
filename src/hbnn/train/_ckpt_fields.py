"""Type and range checks of every checkpoint metadata field (see :mod:`hbnn.train.checkpoint`).

Private to :mod:`hbnn.train.checkpoint`, which runs :func:`validate_metadata` on every
header it loads and every header it is about to write. Bools are not integers, numbers
where a value is expected must be finite; observed losses (``metrics``,
``epoch_sums.loss_sum``) may be NaN or infinite so a diverged run stays loadable.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from hbnn.errors import CheckpointError

__all__ = ["FORMAT", "SCHEMA_VERSION", "RUN_ID_PATTERN", "validate_metadata", "position"]

FORMAT = "hbnn-checkpoint"
SCHEMA_VERSION = 2
#: A run identity: 32 lowercase hex digits (``secrets.token_hex(16)``).
RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")

_SHAPE_KEYS = ("num_classes", "in_channels", "image_size")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any, finite: bool = True) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok and (not finite or math.isfinite(value))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """Checks on one header; every failure is one line naming the file and the field."""

    def __init__(self, meta: Mapping[str, Any], where: Path) -> None:
        self.meta, self.where = meta, where

    def fail(self, key: str, value: Any, expected: str) -> None:
        raise CheckpointError(f"checkpoint {self.where}: metadata field {key} is {_short(value)}; "
                              f"expected {expected}")

    def int_at_least(self, key: str, value: Any, low: int) -> int:
        if not _is_int(value) or value < low:
            self.fail(key, value, f"an integer >= {low}")
        return value

    def kind(self, key: str, value: Any, types: tuple, expected: str, optional: bool = False) -> Any:
        if not (isinstance(value, types) or (optional and value is None)):
            self.fail(key, value, expected)
        return value


def position(meta: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(step, epoch, batch_in_epoch)``: the order of two checkpoints of one run (validated metadata)."""
    return meta["step"], meta["epoch"], meta["batch_in_epoch"]


def _check_position(f: _Fields, meta: Mapping[str, Any]) -> None:
    step = f.int_at_least("step", meta.get("step"), 0)
    epoch = f.int_at_least("epoch", meta.get("epoch"), 0)
    batch = f.int_at_least("batch_in_epoch", meta.get("batch_in_epoch"), 0)
    if batch > step or step < epoch + batch:
        raise CheckpointError(f"checkpoint {f.where}: step {step}, epoch {epoch} and batch_in_epoch {batch} "
                              "are inconsistent (need batch_in_epoch <= step and step >= epoch + batch_in_epoch)")
    if "steps_per_epoch" in meta:
        per_epoch = f.int_at_least("steps_per_epoch", meta["steps_per_epoch"], 1)
        if batch >= per_epoch:
            f.fail("batch_in_epoch", batch, f"a batch index < steps_per_epoch ({per_epoch})")


def _check_model(f: _Fields, meta: Mapping[str, Any]) -> None:
    model = f.kind("model", meta["model"], (dict,), "an object")
    f.kind("model.name", model.get("name"), (str,), "a model name")
    for key in _SHAPE_KEYS:
        if key in model:
            f.int_at_least(f"model.{key}", model[key], 1)
    config = meta.get("config")
    if isinstance(config, dict):
        expected = {"name": (config.get("model") or {}).get("name"), "config": config.get("model"),
                    "quant": config.get("quant")}
        for key, value in expected.items():
            if key in model and json.dumps(model[key], sort_keys=True) != json.dumps(value, sort_keys=True):
                raise CheckpointError(f"checkpoint {f.where}: metadata field model.{key} disagrees with "
                                      f"config ({_short(model[key])} vs {_short(value)})")


def _check_best(f: _Fields, meta: Mapping[str, Any]) -> None:
    metric, epoch = meta.get("best_metric"), meta.get("best_epoch")
    if metric is not None and not _is_number(metric):
        f.fail("best_metric", metric, "null or a finite number")
    if epoch is not None and (not _is_int(epoch) or not 1 <= epoch <= meta["epoch"]):
        f.fail("best_epoch", epoch, f"null or an integer in [1, {meta['epoch']}]")
    if (metric is None) != (epoch is None):
        raise CheckpointError(f"checkpoint {f.where}: metadata fields best_metric and best_epoch must be "
                              "both null or both set")


def _check_ranks(f: _Fields, meta: Mapping[str, Any]) -> None:
    world = f.int_at_least("world_size", meta.get("world_size", 1), 1)
    ranks = f.kind("ranks", meta.get("ranks", []), (list,), "a list")
    if "ranks" in meta and len(ranks) != world:
        f.fail("ranks", f"{len(ranks)} entries", f"one entry per process ({world})")
    for i, entry in enumerate(ranks):
        f.kind(f"ranks[{i}]", entry, (dict,), "an object")
        f.kind(f"ranks[{i}].rng", entry.get("rng"), (dict,), "an object (RNG states)")
        sums = f.kind(f"ranks[{i}].epoch_sums", entry.get("epoch_sums"), (dict,), "null or an object",
                      optional=True)
        if sums is not None:
            if set(sums) != {"loss_sum", "correct", "count"}:
                f.fail(f"ranks[{i}].epoch_sums", sorted(sums), "keys loss_sum, correct, count")
            if not _is_number(sums["loss_sum"], finite=False):
                f.fail(f"ranks[{i}].epoch_sums.loss_sum", sums["loss_sum"], "a number")
            f.int_at_least(f"ranks[{i}].epoch_sums.correct", sums["correct"], 0)
            f.int_at_least(f"ranks[{i}].epoch_sums.count", sums["count"], 0)


def _check_states(f: _Fields, meta: Mapping[str, Any]) -> None:
    opt = f.kind("optimizer", meta.get("optimizer"), (dict,), "null or an object", optional=True)
    if opt is not None:
        f.kind("optimizer.state", opt.get("state"), (dict,), "an object")
        f.kind("optimizer.param_groups", opt.get("param_groups"), (list,), "a list")
    f.kind("scheduler", meta.get("scheduler"), (dict,), "null or an object", optional=True)
    metrics = f.kind("metrics", meta.get("metrics", {}), (dict,), "an object")
    for key, value in metrics.items():
        if value is not None and not _is_number(value, finite=False):
            f.fail(f"metrics.{key}", value, "null or a number")
    wall = meta.get("wall_time_s", 0.0)
    if not _is_number(wall) or wall < 0:
        f.fail("wall_time_s", wall, "a finite number >= 0")


def validate_metadata(meta: Mapping[str, Any], where: Path) -> None:
    """Check the type and range of every checkpoint metadata field; raise on the first problem.

    Required: ``format``, ``schema_version``, ``run_id``, ``step``, ``epoch``,
    ``batch_in_epoch``; the others are checked when present (see the module docstring of
    :mod:`hbnn.train.checkpoint`).

    Raises:
        CheckpointError: one line naming ``where`` and the field.
    """
    f = _Fields(meta, where)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not an hbnn checkpoint (format {_short(meta.get('format'))})")
    version = meta.get("schema_version")
    if not _is_int(version) or version != SCHEMA_VERSION:
        raise CheckpointError(f"checkpoint {where} has schema version {_short(version)}; this hbnn reads "
                              f"version {SCHEMA_VERSION} (re-create it by training with this version)")
    run_id = meta.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        f.fail("run_id", run_id, "32 lowercase hex digits")
    _check_position(f, meta)
    for key in ("hbnn_version", "torch_version", "payload_sha256"):
        if key in meta:
            f.kind(key, meta[key], (str,), "a string")
    f.kind("config", meta.get("config", {}), (dict,), "an object")
    if "model" in meta:
        _check_model(f, meta)
    _check_best(f, meta)
    _check_ranks(f, meta)
    _check_states(f, meta)
