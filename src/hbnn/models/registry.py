"""Model registry: one name per architecture, built with :func:`build_model`.

A builder is any callable (usually the ``nn.Module`` class itself) whose keyword
arguments include ``num_classes``, ``in_channels`` and ``image_size``; its other keyword
arguments are the model's options. :func:`build_model` checks option names against the
builder's signature, so a typo in a YAML recipe fails with a one-line
:class:`~hbnn.errors.ConfigError` instead of being ignored. A model name is one of:

- a name registered with :func:`register_model` (the zoo: :func:`list_models`);
- a name an installed distribution declares in the entry-point group ``hbnn.models``
  (``[project.entry-points."hbnn.models"] mynet = "mypkg.nets:build"``), loaded on first use;
- a *model path* ``package.module:attr`` (:func:`is_model_path`): ``attr`` of the module,
  imported on use (the current directory is tried too, as ``python -m`` would). A run
  records the name in ``config.yaml``, so later commands rebuild the model without flags
  as long as the module is importable.

Example:
    >>> from hbnn.models import build_model
    >>> model = build_model("cifar_fc4", num_classes=10, in_channels=1, image_size=28)
    >>> is_model_path("mypkg.nets:small_net"), is_model_path("cifar_fc4")
    (True, False)
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from importlib import metadata
from typing import Any, Callable, TypeVar

from torch import nn

from hbnn.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "build_model", "is_model_path", "list_models", "model_options", "register_model"]

#: Keyword arguments every builder takes; :func:`build_model` passes them explicitly.
COMMON_ARGS = ("num_classes", "in_channels", "image_size")

#: Entry-point group of model builders shipped by other distributions.
ENTRY_POINT_GROUP = "hbnn.models"

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODEL_PATH = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*")

B = TypeVar("B", bound=Callable[..., nn.Module])


def is_model_path(name: Any) -> bool:
    """Whether ``name`` has the form ``package.module:attr`` (a user model, not a registered name)."""
    return isinstance(name, str) and _MODEL_PATH.fullmatch(name) is not None


def _keyword_params(builder: Callable[..., nn.Module]) -> dict[str, inspect.Parameter]:
    params = inspect.signature(builder).parameters
    return {
        name: p
        for name, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


def _missing_common(builder: Callable[..., nn.Module]) -> list[str]:
    """The common keyword arguments ``builder`` cannot take (all of them if it has no signature)."""
    try:
        params = _keyword_params(builder)
    except (TypeError, ValueError):
        return list(COMMON_ARGS)
    return [a for a in COMMON_ARGS if a not in params]


def register_model(name: str) -> Callable[[B], B]:
    """Decorator that registers a model builder (class or function) under ``name``.

    Args:
        name: the name :func:`build_model` and recipes use, e.g. ``"cifar_fc4"``.

    Returns:
        A decorator returning the builder unchanged.

    Raises:
        ValueError: if ``name`` is empty or already registered, or the builder lacks a
            keyword argument in ``num_classes``, ``in_channels``, ``image_size``.
        TypeError: if ``name`` is not a string or the builder is not callable.
    """
    if not isinstance(name, str):
        raise TypeError(f"register_model: name must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError("register_model: name must be a non-empty string")

    def decorator(builder: B) -> B:
        if not callable(builder):
            raise TypeError(f"register_model({name!r}): builder must be callable, got {builder!r}")
        if name in _MODELS:
            raise ValueError(f"register_model: model {name!r} is already registered")
        missing = _missing_common(builder)
        if missing:
            raise ValueError(
                f"register_model({name!r}): builder lacks keyword argument(s) {', '.join(missing)}"
            )
        _MODELS[name] = builder
        return builder

    return decorator


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_models() -> list[str]:
    """Names of all registered models and ``hbnn.models`` entry points, sorted."""
    return sorted({*_MODELS, *_entry_points()})


def _import_module(name: str, module: str) -> Any:
    """Import ``module``; on a missing top-level package, retry with the current directory on ``sys.path``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != module.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise ConfigError(f"model {name!r}: cannot import {module} ({exc})") from None
    sys.path.append(cwd)  # console scripts leave the working directory off sys.path; python -m puts it first
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"model {name!r}: cannot import {module} ({exc})") from None


def _from_path(name: str) -> Any:
    """The object ``package.module:attr`` names (importing the module)."""
    module, attrs = name.split(":")
    try:
        obj = _import_module(name, module)
    except ConfigError:
        raise
    except Exception as exc:  # the user's module raised while importing: say which and why, in one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"model {name!r}: importing {module} failed ({type(exc).__name__}: {first})") from None
    for attr in attrs.split("."):
        if not hasattr(obj, attr):
            raise ConfigError(f"model {name!r}: module {module} has no attribute {attrs!r}")
        obj = getattr(obj, attr)
    return obj


def _from_entry_point(name: str, ep: metadata.EntryPoint) -> Any:
    try:
        return ep.load()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"model {name!r}: entry point {ep.value} ({ENTRY_POINT_GROUP}) failed to load "
                          f"({type(exc).__name__}: {first})") from None


def _get(name: str) -> Callable[..., nn.Module]:
    """The builder of ``name``: registered, a model path, or an entry point (module docstring)."""
    if isinstance(name, str) and name in _MODELS:
        return _MODELS[name]
    if is_model_path(name):
        builder = _from_path(name)
    elif isinstance(name, str) and name in (eps := _entry_points()):
        builder = _from_entry_point(name, eps[name])
    else:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}; "
                          "or a user model as package.module:callable")
    if not callable(builder):
        raise ConfigError(f"model {name!r}: {type(builder).__name__} object is not callable; "
                          "give a class or function returning an nn.Module")
    missing = _missing_common(builder)
    if missing:
        raise ConfigError(f"model {name!r}: the builder must take keyword argument(s) {', '.join(missing)} "
                          f"(it is called as fn({'=..., '.join(COMMON_ARGS)}=..., **options))")
    return builder


def model_options(name: str) -> dict[str, Any]:
    """The model-specific options of ``name`` with their defaults (excluding the common args).

    Raises:
        ConfigError: if ``name`` is not a usable model (see :func:`build_model`).
    """
    params = _keyword_params(_get(name))
    return {k: p.default for k, p in params.items() if k not in COMMON_ARGS}


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    image_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a name from :func:`list_models`, or a model path ``package.module:attr``.
        num_classes: number of output logits.
        in_channels: input image channels; ``None`` uses the model's default (3).
        image_size: input side length in pixels (square images); ``None`` uses the
            model's default (32 for the CIFAR nets, 224 for the ImageNet ones).
        **kwargs: model-specific options (see :func:`model_options`), e.g.
            ``activation="hardtanh"``.

    Returns:
        A freshly initialised ``nn.Module`` in training mode mapping
        ``[B, in_channels, image_size, image_size]`` to logits ``[B, num_classes]``.

    Raises:
        ConfigError: unknown model name (lists the registered ones), a model path that
            does not import or name a suitable callable, unknown option (names it and lists
            the allowed ones), an invalid option value, or a builder that returned
            something other than an ``nn.Module``.
    """
    builder = _get(name)
    allowed = [k for k in _keyword_params(builder) if k not in COMMON_ARGS]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"model {name!r}: unknown option {key!r}; allowed: {', '.join(allowed) or '(none)'}"
            )
    common: dict[str, Any] = {"num_classes": num_classes}
    if in_channels is not None:
        common["in_channels"] = in_channels
    if image_size is not None:
        common["image_size"] = image_size
    model = builder(**common, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r}: the builder returned a {type(model).__name__}, not a torch.nn.Module")
    return model
