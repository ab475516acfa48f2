"""Type and range checks of every checkpoint metadata field (see :mod:`hbnn.train.checkpoint`).

Private to :mod:`hbnn.train.checkpoint`, which runs :func:`validate_metadata` on every
header it loads and every header it is about to write. Bools are not integers, numbers
where a value is expected must be finite; observed losses (``metrics``,
``epoch_sums.loss_sum``) may be NaN or infinite so a diverged run stays loadable.

``config`` is checked by the one config schema (:func:`hbnn.train.config.config_from_dict`)
and must be in its resolved form (every key present, each value of its field's type:
``config_to_dict(config_from_dict(c)) == c``); ``model`` must agree with it (name, model
section, quant section, the dataset's shape). RNG states must have the structure
:func:`hbnn.train.checkpoint.capture_rng_state` writes (python: version 3, 625 words,
gauss null or finite; numpy: the legacy ``MT19937`` tuple; torch: base64 of the CPU
generator's state). ``metrics`` is ``{}`` or the last evaluation (``epoch`` in
``[1, epoch]``, ``loss`` any number, ``top1 <= top5`` in ``[0, 1]``, NaN exactly when
``count`` is 0). Training extensions (:mod:`hbnn.train.step`): ``grad_scaler`` (the
GradScaler state: the five keys, ``scale``/``growth_factor`` > 0, ``backoff_factor`` in
(0, 1), integer ``growth_interval`` >= 1 and ``_growth_tracker`` >= 0) is present exactly
when the config's ``train.amp`` is fp16, ``teacher_sha256`` (64 hex digits) exactly when
``train.teacher`` is set; ``user_data``, when present, is true (a run trained on a user
dataset: its shape is not compared with the config's dataset). Every integer anywhere in the metadata is within ``+-2**53``
(:data:`MAX_JSON_INT`), exact in every JSON reader.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from hbnn.data import dataset_info
from hbnn.schema import is_int, is_number, short_repr
from hbnn.errors import CheckpointError, ConfigError
from hbnn.train.config import Config, config_from_dict, config_to_dict

__all__ = ["FORMAT", "SCHEMA_VERSION", "RUN_ID_PATTERN", "MAX_JSON_INT", "validate_metadata", "position"]

FORMAT = "hbnn-checkpoint"
SCHEMA_VERSION = 2
#: A run identity: 32 lowercase hex digits (``secrets.token_hex(16)``).
RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")

_SHAPE_KEYS = ("num_classes", "in_channels", "image_size")
_MODEL_KEYS = ("name", "config", "quant", *_SHAPE_KEYS)
_METRIC_KEYS = ("epoch", "loss", "top1", "top5", "count")
_RNG_KEYS = ("python", "numpy", "torch", "cuda")
#: ``torch.amp.GradScaler.state_dict()`` keys (``train.amp: fp16``).
_SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Mersenne Twister: 624 32-bit words and a position in [0, 624].
_MT_WORDS = 624








class _Fields:
    """Checks on one header; every failure is one line naming the file and the field."""

    def __init__(self, meta: Mapping[str, Any], where: Path) -> None:
        self.meta, self.where = meta, where

    def fail(self, key: str, value: Any, expected: str) -> None:
        raise CheckpointError(f"checkpoint {self.where}: metadata field {key} is {short_repr(value)}; "
                              f"expected {expected}")

    def int_at_least(self, key: str, value: Any, low: int) -> int:
        if not is_int(value) or value < low:
            self.fail(key, value, f"an integer >= {low}")
        return value

    def kind(self, key: str, value: Any, types: tuple, expected: str, optional: bool = False) -> Any:
        if not (isinstance(value, types) or (optional and value is None)):
            self.fail(key, value, expected)
        return value


#: Integers in the metadata are exact in every JSON reader (float64): |n| <= 2**53.
MAX_JSON_INT = 2 ** 53


def _huge_int(node: Any, path: str) -> tuple[str, int] | None:
    """The first ``(path, value)`` of an integer beyond :data:`MAX_JSON_INT` in a JSON tree."""
    if isinstance(node, dict):
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in node.items()]
    elif isinstance(node, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
    else:
        return (path, node) if is_int(node) and abs(node) > MAX_JSON_INT else None
    return next((found for sub, value in items if (found := _huge_int(value, sub))), None)


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


def _json_type(value: Any) -> str:
    """The JSON kind of a value: bools, ints and floats are three kinds."""
    return "list" if isinstance(value, (list, tuple)) else type(value).__name__


def _first_difference(given: Any, canon: Any, path: str) -> str | None:
    """``"<key> <what is wrong>"`` where ``given`` first differs from ``canon`` (types included)."""
    if isinstance(canon, dict) and isinstance(given, dict):
        for key in canon:
            if key not in given:
                return f"{path}.{key} is missing (a checkpoint holds the resolved config, every key)"
            found = _first_difference(given[key], canon[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(canon, list) and isinstance(given, list) and len(canon) == len(given):
        for i, (a, b) in enumerate(zip(given, canon)):
            found = _first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if _json_type(given) != _json_type(canon) or given != canon:
        return f"{path} is {short_repr(given)}; expected {short_repr(canon)} (its resolved form)"
    return None


def _config_error(f: _Fields, exc: Exception) -> CheckpointError:
    """A config schema error as one line naming the file and the ``config.``-prefixed key."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("unknown key "):
        text = "unknown key config." + text[len("unknown key "):]
    elif text[:1].isalpha() and ":" in text.split(" ", 1)[0]:
        text = "config." + text
    else:
        text = "config: " + text
    return CheckpointError(f"checkpoint {f.where}: metadata field {text}")


def _check_config(f: _Fields, meta: Mapping[str, Any]) -> Config | None:
    """Validate ``config`` with the config schema; it must be the resolved form. None if absent."""
    if "config" not in meta:
        return None
    config = f.kind("config", meta["config"], (dict,), "an object (the resolved run config)")
    try:
        cfg = config_from_dict(config)
    except (ConfigError, ValueError, TypeError) as exc:
        raise _config_error(f, exc) from None
    diff = _first_difference(config, config_to_dict(cfg), "config")
    if diff is not None:
        raise CheckpointError(f"checkpoint {f.where}: metadata field {diff}")
    return cfg


def _check_model(f: _Fields, meta: Mapping[str, Any], cfg: Config | None) -> None:
    model = f.kind("model", meta["model"], (dict,), "an object")
    f.kind("model.name", model.get("name"), (str,), "a model name")
    for key in _SHAPE_KEYS:
        f.int_at_least(f"model.{key}", model.get(key), 1)
    missing = [k for k in _MODEL_KEYS if k not in model]
    if missing:
        raise CheckpointError(f"checkpoint {f.where}: metadata field model.{missing[0]} is missing")
    extra = sorted(set(model) - set(_MODEL_KEYS))
    if extra:
        f.fail("model", f"{{..., {extra[0]!r}: ...}}", f"only the keys {', '.join(_MODEL_KEYS)}")
    if cfg is None:
        return
    config = meta["config"]
    expected = {"name": config["model"]["name"], "config": config["model"], "quant": config["quant"]}
    info = dataset_info(cfg.data.name)
    shape = {"num_classes": info.num_classes, "in_channels": info.in_channels,
             "image_size": cfg.data.image_size if cfg.data.image_size is not None else info.image_size}
    if meta.get("user_data") is not True:  # a user dataset (fit(train_data=...)) has its own shape
        expected.update({k: v for k, v in shape.items() if v is not None})
    for key, value in expected.items():
        if json.dumps(model[key], sort_keys=True) != json.dumps(value, sort_keys=True):
            raise CheckpointError(f"checkpoint {f.where}: metadata field model.{key} disagrees with "
                                  f"config ({short_repr(model[key])} vs {short_repr(value)})")


def _check_best(f: _Fields, meta: Mapping[str, Any]) -> None:
    metric, epoch = meta.get("best_metric"), meta.get("best_epoch")
    if metric is not None and (not is_number(metric) or not 0 <= metric <= 1):
        f.fail("best_metric", metric, "null or a number in [0, 1] (a top-1 accuracy)")
    if epoch is not None and (not is_int(epoch) or not 1 <= epoch <= meta["epoch"]):
        f.fail("best_epoch", epoch, f"null or an integer in [1, {meta['epoch']}]")
    if (metric is None) != (epoch is None):
        raise CheckpointError(f"checkpoint {f.where}: metadata fields best_metric and best_epoch must be "
                              "both null or both set")


def _check_words(f: _Fields, key: str, words: Any, n: int) -> None:
    """``n`` integers in ``[0, 2**32)`` (Mersenne Twister state words)."""
    if not isinstance(words, list) or len(words) != n:
        f.fail(key, words if not isinstance(words, list) else f"{len(words)} entries",
               f"a list of {n} integers in [0, 2**32)")
    for i, word in enumerate(words):
        if not is_int(word) or not 0 <= word < 2 ** 32:
            f.fail(f"{key}[{i}]", word, "an integer in [0, 2**32)")


def _check_b64(f: _Fields, key: str, text: Any, size: int | None) -> None:
    """Base64 of a ByteTensor (of ``size`` bytes, if given)."""
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or not raw or (size is not None and len(raw) != size):
        f.fail(key, text, "base64 of a generator state" + (f" ({size} bytes)" if size else ""))


def _check_rng(f: _Fields, key: str, rng: Any) -> None:
    """The structure :func:`hbnn.train.checkpoint.capture_rng_state` writes (see the module docstring)."""
    import torch

    f.kind(key, rng, (dict,), "an object (RNG states)")
    if sorted(rng) != sorted(_RNG_KEYS):
        f.fail(key, sorted(rng), f"the keys {', '.join(_RNG_KEYS)}")
    py = rng["python"]
    if not isinstance(py, list) or len(py) != 3:
        f.fail(f"{key}.python", py, "[version, 625 state words, gauss]")
    if not is_int(py[0]) or py[0] != 3:
        f.fail(f"{key}.python[0]", py[0], "3 (the random module's state version)")
    _check_words(f, f"{key}.python[1]", py[1], _MT_WORDS + 1)
    if py[1][-1] > _MT_WORDS:
        f.fail(f"{key}.python[1][{_MT_WORDS}]", py[1][-1], f"a position in [0, {_MT_WORDS}]")
    if py[2] is not None and not is_number(py[2]):
        f.fail(f"{key}.python[2]", py[2], "null or a finite number")
    state = rng["numpy"]
    if not isinstance(state, list) or len(state) != 5:
        f.fail(f"{key}.numpy", state, "[\"MT19937\", 624 words, position, has_gauss, cached_gaussian]")
    if state[0] != "MT19937":
        f.fail(f"{key}.numpy[0]", state[0], "'MT19937'")
    _check_words(f, f"{key}.numpy[1]", state[1], _MT_WORDS)
    if not is_int(state[2]) or not 0 <= state[2] <= _MT_WORDS:
        f.fail(f"{key}.numpy[2]", state[2], f"a position in [0, {_MT_WORDS}]")
    if not is_int(state[3]) or state[3] not in (0, 1):
        f.fail(f"{key}.numpy[3]", state[3], "0 or 1")
    if not isinstance(state[4], float) or not math.isfinite(state[4]):
        f.fail(f"{key}.numpy[4]", state[4], "a finite float")
    _check_b64(f, f"{key}.torch", rng["torch"], torch.get_rng_state().numel())
    cuda = f.kind(f"{key}.cuda", rng["cuda"], (list,), "a list")
    for i, text in enumerate(cuda):
        _check_b64(f, f"{key}.cuda[{i}]", text, None)


def _check_ranks(f: _Fields, meta: Mapping[str, Any]) -> None:
    world = f.int_at_least("world_size", meta.get("world_size", 1), 1)
    ranks = f.kind("ranks", meta.get("ranks", []), (list,), "a list")
    if "ranks" in meta and len(ranks) != world:
        f.fail("ranks", f"{len(ranks)} entries", f"one entry per process ({world})")
    for i, entry in enumerate(ranks):
        f.kind(f"ranks[{i}]", entry, (dict,), "an object")
        if sorted(entry) != ["epoch_sums", "rng"]:
            f.fail(f"ranks[{i}]", sorted(entry), "the keys rng, epoch_sums")
        _check_rng(f, f"ranks[{i}].rng", entry["rng"])
        sums = f.kind(f"ranks[{i}].epoch_sums", entry.get("epoch_sums"), (dict,), "null or an object",
                      optional=True)
        if sums is not None:
            if set(sums) != {"loss_sum", "correct", "count"}:
                f.fail(f"ranks[{i}].epoch_sums", sorted(sums), "keys loss_sum, correct, count")
            if not is_number(sums["loss_sum"], finite=False):
                f.fail(f"ranks[{i}].epoch_sums.loss_sum", sums["loss_sum"], "a number")
            f.int_at_least(f"ranks[{i}].epoch_sums.correct", sums["correct"], 0)
            count = f.int_at_least(f"ranks[{i}].epoch_sums.count", sums["count"], 0)
            if sums["correct"] > count:
                f.fail(f"ranks[{i}].epoch_sums.correct", sums["correct"], f"at most count ({count})")


def _check_metrics(f: _Fields, meta: Mapping[str, Any]) -> None:
    """``{}`` or the last evaluation: epoch, loss (any number), top1 <= top5 in [0, 1], count."""
    metrics = f.kind("metrics", meta.get("metrics", {}), (dict,), "an object")
    if not metrics:
        return
    for key in ("loss", "top1", "top5"):
        if key in metrics and not is_number(metrics[key], finite=False):
            f.fail(f"metrics.{key}", metrics[key], "a number")
    if sorted(metrics) != sorted(_METRIC_KEYS):
        f.fail("metrics", sorted(metrics), f"{{}} or the keys {', '.join(_METRIC_KEYS)}")
    epoch = metrics["epoch"]
    if not is_int(epoch) or not 1 <= epoch <= meta["epoch"]:
        f.fail("metrics.epoch", epoch, f"an integer in [1, {meta['epoch']}] (the epoch evaluated)")
    count = f.int_at_least("metrics.count", metrics["count"], 0)
    for key in ("top1", "top5"):
        value = metrics[key]
        if math.isnan(value) != (count == 0) or not (math.isnan(value) or 0 <= value <= 1):
            f.fail(f"metrics.{key}", value, "an accuracy in [0, 1] (NaN exactly when count is 0)")
    if count and metrics["top1"] > metrics["top5"]:
        f.fail("metrics.top1", metrics["top1"], f"at most top5 ({metrics['top5']})")


def _check_states(f: _Fields, meta: Mapping[str, Any]) -> None:
    opt = f.kind("optimizer", meta.get("optimizer"), (dict,), "null or an object", optional=True)
    if opt is not None:
        f.kind("optimizer.state", opt.get("state"), (dict,), "an object")
        f.kind("optimizer.param_groups", opt.get("param_groups"), (list,), "a list")
        if sorted(opt) != ["param_groups", "state"]:
            f.fail("optimizer", sorted(opt), "the keys state, param_groups")
    f.kind("scheduler", meta.get("scheduler"), (dict,), "null or an object", optional=True)
    _check_metrics(f, meta)
    wall = meta.get("wall_time_s", 0.0)
    if not is_number(wall) or wall < 0:
        f.fail("wall_time_s", wall, "a finite number >= 0")


def _check_extensions(f: _Fields, meta: Mapping[str, Any], cfg: Config | None) -> None:
    """``grad_scaler`` iff ``train.amp`` is fp16, ``teacher_sha256`` iff ``train.teacher``; ``user_data``."""
    if "user_data" in meta and meta["user_data"] is not True:
        f.fail("user_data", meta["user_data"], "true (absent when the run used its config's dataset)")
    wanted = {"grad_scaler": cfg.train.amp == "fp16" if cfg is not None else None,
              "teacher_sha256": cfg.train.teacher is not None if cfg is not None else None}
    for key, want in wanted.items():
        if want is not None and (key in meta) != want:
            raise CheckpointError(f"checkpoint {f.where}: metadata field {key} is "
                                  f"{'missing' if want else 'unexpected'} (train.amp / train.teacher of its config)")
    if "teacher_sha256" in meta:
        sha = meta["teacher_sha256"]
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            f.fail("teacher_sha256", sha, "64 lowercase hex digits (the teacher checkpoint's sha256)")
    if "grad_scaler" in meta:
        scaler = f.kind("grad_scaler", meta["grad_scaler"], (dict,), "an object (GradScaler state)")
        if sorted(scaler) != sorted(_SCALER_KEYS):
            f.fail("grad_scaler", sorted(scaler), f"the keys {', '.join(_SCALER_KEYS)}")
        for key in ("scale", "growth_factor"):
            if not is_number(scaler[key]) or scaler[key] <= 0:
                f.fail(f"grad_scaler.{key}", scaler[key], "a finite number > 0")
        if not is_number(scaler["backoff_factor"]) or not 0 < scaler["backoff_factor"] < 1:
            f.fail("grad_scaler.backoff_factor", scaler["backoff_factor"], "a number in (0, 1)")
        f.int_at_least("grad_scaler.growth_interval", scaler["growth_interval"], 1)
        f.int_at_least("grad_scaler._growth_tracker", scaler["_growth_tracker"], 0)


def validate_metadata(meta: Mapping[str, Any], where: Path) -> None:
    """Check the type and range of every checkpoint metadata field; raise on the first problem.

    Required: ``format``, ``schema_version``, ``run_id``, ``step``, ``epoch``,
    ``batch_in_epoch``; the others are checked when present (see the module docstring of
    :mod:`hbnn.train.checkpoint`).

    Raises:
        CheckpointError: one line naming ``where`` and the field.
    """
    f = _Fields(meta, where)
    big = _huge_int(meta, "")
    if big is not None:
        f.fail(big[0], big[1], "an integer within +-2**53 (exact in every JSON reader)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not an hbnn checkpoint (format {short_repr(meta.get('format'))})")
    version = meta.get("schema_version")
    if not is_int(version) or version != SCHEMA_VERSION:
        raise CheckpointError(f"checkpoint {where} has schema version {short_repr(version)}; this hbnn reads "
                              f"version {SCHEMA_VERSION} (re-create it by training with this version)")
    run_id = meta.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        f.fail("run_id", run_id, "32 lowercase hex digits")
    _check_position(f, meta)
    for key in ("hbnn_version", "torch_version", "payload_sha256"):
        if key in meta:
            f.kind(key, meta[key], (str,), "a string")
    if ("config" in meta) != ("model" in meta):
        raise CheckpointError(f"checkpoint {where}: metadata fields config and model must be both present "
                              "(a training run writes both) or both absent")
    cfg = _check_config(f, meta)
    if "model" in meta:
        _check_model(f, meta, cfg)
    _check_best(f, meta)
    _check_ranks(f, meta)
    _check_states(f, meta)
    _check_extensions(f, meta, cfg)
