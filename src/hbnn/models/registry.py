"""Model registry: one name per architecture, built with :func:`build_model`.

A registered builder is any callable (usually the ``nn.Module`` class itself) whose
keyword arguments include ``num_classes``, ``in_channels`` and ``image_size``; its other
keyword arguments are the model's options. :func:`build_model` checks option names
against the builder's signature, so a typo in a YAML recipe fails with a one-line
:class:`~hbnn.errors.ConfigError` instead of being ignored.

Example:
    >>> from hbnn.models import build_model
    >>> model = build_model("cifar_fc4", num_classes=10, in_channels=1, image_size=28)
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from torch import nn

from hbnn.errors import ConfigError

__all__ = ["build_model", "list_models", "model_options", "register_model"]

#: Keyword arguments every builder takes; :func:`build_model` passes them explicitly.
COMMON_ARGS = ("num_classes", "in_channels", "image_size")

_MODELS: dict[str, Callable[..., nn.Module]] = {}

B = TypeVar("B", bound=Callable[..., nn.Module])


def _keyword_params(builder: Callable[..., nn.Module]) -> dict[str, inspect.Parameter]:
    params = inspect.signature(builder).parameters
    return {
        name: p
        for name, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


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
        missing = [a for a in COMMON_ARGS if a not in _keyword_params(builder)]
        if missing:
            raise ValueError(
                f"register_model({name!r}): builder lacks keyword argument(s) {', '.join(missing)}"
            )
        _MODELS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def _get(name: str) -> Callable[..., nn.Module]:
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}"
        ) from None


def model_options(name: str) -> dict[str, Any]:
    """The model-specific options of ``name`` with their defaults (excluding the common args).

    Raises:
        ConfigError: if ``name`` is not registered.
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
        name: a name from :func:`list_models`.
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
        ConfigError: unknown model name (lists the registered ones), unknown option
            (names it and lists the allowed ones) or an invalid option value.
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
    return builder(**common, **kwargs)
