"""Validation of a packed header's provenance records: ``model``, ``meta`` and ``input_shape``.

These fields do not change what the layers compute, but ``hbnn infer`` (dataset, epoch,
step), ``hbnn hw estimate --packed`` (the source model) and the shape check at load
(``input_shape``) use them, so they are checked like every other field:

* ``model`` is an object with a printable ``name`` and optionally ``config`` (exactly the
  keys of :class:`hbnn.train.config.ModelConfig`, valid for it, with model options of the
  types of the registered model's defaults: an integer option is not a bool, a list of
  integers holds integers; a user model ``package.module:callable`` is not imported here,
  so its options are checked only as :class:`ModelConfig` checks them), ``quant`` (null or a valid
  :class:`hbnn.convert.QuantizeConfig`), ``num_classes``/``in_channels``/``image_size``
  (integers >= 1);
* ``meta.data``, when present, has exactly ``name`` (string), ``data_dir`` (string or
  null), ``image_size`` (integer >= 1 or null); ``meta.source``, when present, exactly
  ``checkpoint`` (string), ``sha256`` (64 hex digits or null), ``epoch`` and ``step``
  (integers >= 0), ``metrics`` (null or an object of numbers); other ``meta`` keys are
  the exporter's own and not read;
* ``input_shape`` is 1 to 3 positive integers (at most :data:`MAX_INPUT_ELEMENTS` in all),
  equal to ``[in_channels, image_size, image_size]`` when the model records those.
"""

from __future__ import annotations

import math
import re
from typing import Any

from hbnn.errors import FormatError
from hbnn.export._checks import MAX_INT, At, is_int, is_number, short

__all__ = ["MODEL_KEYS", "MAX_INPUT_ELEMENTS", "check_model", "check_meta", "check_input_shape"]

#: Keys a ``model`` record may hold (``name`` is required).
MODEL_KEYS = ("name", "config", "quant", "num_classes", "in_channels", "image_size")
#: Most entries of one input (``prod(input_shape)``).
MAX_INPUT_ELEMENTS = 2 ** 24
_MODEL_CONFIG_KEYS = ("name", "activation", "kwargs")
_DATA_KEYS = ("name", "data_dir", "image_size")
_SOURCE_KEYS = ("checkpoint", "sha256", "epoch", "step", "metrics")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _like(value: Any, default: Any) -> bool:
    """Whether ``value`` has the JSON type of a model option whose default is ``default``."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return is_int(value) and abs(value) <= MAX_INT
    if isinstance(default, float):
        return is_number(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (tuple, list)):
        return isinstance(value, list) and (not default or all(_like(v, default[0]) for v in value))
    return True


def _schema_error(at: At, field: str, exc: Exception) -> FormatError:
    """The first line of a schema's error, naming ``field`` unless it does already."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return FormatError(f"{at.where}: {first}" if field in first else f"{at.where}: {field}: {first}")


def _check_config(at: At, config: Any) -> None:
    """``model.config``: a valid :class:`ModelConfig` whose options have their defaults' types."""
    from hbnn.models import is_model_path, model_options
    from hbnn.train.config import ModelConfig

    at.keys("model.config.", config, _MODEL_CONFIG_KEYS)
    try:
        cfg = ModelConfig.from_dict(config, "model.config")
        if is_model_path(cfg.name):  # validating a file never imports code; rebuilding it will
            return
        options = model_options(cfg.name)
    except (ValueError, TypeError) as exc:
        raise _schema_error(at, "model.config", exc) from None
    for key, value in config["kwargs"].items():
        if key not in options:
            key = key if key.isprintable() else short(key)
            raise FormatError(f"{at.where}: model.config.kwargs.{key}: unknown option of model {cfg.name!r}; "
                              f"allowed: {', '.join(options) or '(none)'}")
        if not _like(value, options[key]):
            raise at.fail(f"model.config.kwargs.{key}", value, f"a value like the default {options[key]!r}")


def _check_quant(at: At, quant: Any) -> None:
    from hbnn.convert import QuantizeConfig

    if quant is None:
        return
    if not isinstance(quant, dict):
        raise at.fail("model.quant", quant, "null or an object")
    try:
        QuantizeConfig.from_dict(quant, "model.quant")
    except (ValueError, TypeError) as exc:
        raise _schema_error(at, "model.quant", exc) from None


def check_model(at: At, model: Any) -> None:
    """Validate the ``model`` record (module docstring)."""
    if not isinstance(model, dict):
        raise at.fail("model", model, "an object with a name")
    for key in model:
        if key not in MODEL_KEYS:
            name = key if isinstance(key, str) and key.isprintable() else short(key)
            raise FormatError(f"{at.where}: model.{name}: unknown field; "
                              f"allowed: {', '.join(MODEL_KEYS)}")
    if "name" not in model:
        raise FormatError(f"{at.where}: model.name: missing; the model record needs a name")
    name = at.text("model.name", model["name"])
    for key in ("num_classes", "in_channels", "image_size"):
        if key in model:
            at.int(f"model.{key}", model[key], 1)
    if "config" in model:
        _check_config(at, model["config"])
        if model["config"]["name"] != name:
            raise at.fail("model.config.name", model["config"]["name"], f"{name!r}, the model's name")
    _check_quant(at, model.get("quant"))


def _check_data(at: At, data: Any) -> None:
    at.keys("meta.data.", data, _DATA_KEYS)
    at.text("meta.data.name", data["name"])
    if data["data_dir"] is not None and not isinstance(data["data_dir"], str):
        raise at.fail("meta.data.data_dir", data["data_dir"], "null or a string")
    if data["image_size"] is not None:
        at.int("meta.data.image_size", data["image_size"], 1)


def _check_source(at: At, source: Any) -> None:
    at.keys("meta.source.", source, _SOURCE_KEYS)
    at.text("meta.source.checkpoint", source["checkpoint"])
    sha = source["sha256"]
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise at.fail("meta.source.sha256", sha, "null or 64 lower-case hex digits")
    at.int("meta.source.epoch", source["epoch"])
    at.int("meta.source.step", source["step"], 0, 2 ** 63 - 1)
    metrics = source["metrics"]
    if metrics is not None and not (isinstance(metrics, dict) and all(
            isinstance(k, str) and is_number(v) for k, v in metrics.items())):
        raise at.fail("meta.source.metrics", metrics, "null or an object of finite numbers")


def check_meta(at: At, meta: Any) -> None:
    """Validate ``meta``: an object; its ``data`` and ``source`` records when present (module docstring)."""
    if not isinstance(meta, dict):
        raise at.fail("meta", meta, "an object")
    if "data" in meta:
        _check_data(at, meta["data"])
    if "source" in meta:
        _check_source(at, meta["source"])


def check_input_shape(at: At, shape: Any, model: dict) -> list[int]:
    """Validate ``input_shape`` (required) against the validated ``model`` record."""
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 3 or not all(is_int(s) and s >= 1 for s in shape)
            or math.prod(shape) > MAX_INPUT_ELEMENTS):
        raise at.fail("input_shape", shape, f"1 to 3 positive integers ([C, H, W]) with at most "
                                            f"{MAX_INPUT_ELEMENTS} entries in all")
    if len(shape) == 3 and "in_channels" in model and "image_size" in model:
        recorded = [model["in_channels"], model["image_size"], model["image_size"]]
        if shape != recorded:
            raise at.fail("input_shape", shape, f"{recorded}, the model's [in_channels, image_size, image_size]")
    return shape
