"""Loader hooks: turn a trained run (checkpoint) or a packed model file into an ``nn.Module``.

The hardware model only needs an ``nn.Module`` whose layers carry hbnn quantizers
(:func:`hbnn.hw.estimate.estimate_module`). Reading checkpoints and packed files belongs
to ``hbnn.train`` and ``hbnn.export``; they plug in here, either by registering a
function at import time::

    from hbnn.hw.loaders import register_loader
    register_loader("run", load_run_for_hw)

or by exposing the function named in :data:`DEFAULT_LOADERS`, which is imported on
first use. A loader takes a path and returns ``(model, input_shape)`` with
``input_shape = (C, H, W)`` of one input image.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

from hbnn.errors import ConfigError

__all__ = ["LOADER_KINDS", "DEFAULT_LOADERS", "register_loader", "get_loader", "load_for_estimate"]

Loader = Callable[[Path], "tuple[Any, tuple[int, ...]]"]

LOADER_KINDS = ("run", "packed")
# "module:function" each kind falls back to when nothing was registered.
DEFAULT_LOADERS: dict[str, str] = {
    "run": "hbnn.train.checkpoint:load_model_for_hw",
    "packed": "hbnn.export:load_model_for_hw",
}
_REGISTRY: dict[str, Loader] = {}


def _check_kind(kind: str) -> None:
    if kind not in LOADER_KINDS:
        raise ConfigError(f"loader: unknown kind {kind!r}; known: {', '.join(LOADER_KINDS)}")


def register_loader(kind: str, loader: Loader) -> None:
    """Use ``loader(path) -> (model, (C, H, W))`` for ``kind`` (``"run"`` or ``"packed"``)."""
    _check_kind(kind)
    if not callable(loader):
        raise TypeError(f"loader: expected a callable, got {type(loader).__name__}")
    _REGISTRY[kind] = loader


def get_loader(kind: str) -> Loader:
    """The registered loader for ``kind``, else its :data:`DEFAULT_LOADERS` function.

    Raises:
        ConfigError: when neither exists (the package providing it is not installed yet).
    """
    _check_kind(kind)
    if kind in _REGISTRY:
        return _REGISTRY[kind]
    module_name, attr = DEFAULT_LOADERS[kind].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        module = None
    loader = getattr(module, attr, None)
    if loader is None:
        raise ConfigError(
            f"loader: estimating a {kind} file needs {module_name}.{attr}, which this install does not provide; "
            "use --model NAME --wbits B --abits B instead"
        )
    return loader


def load_for_estimate(kind: str, path: str | os.PathLike) -> tuple[Any, tuple[int, ...]]:
    """Load ``path`` with the ``kind`` loader; returns ``(model, (C, H, W))``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{kind}: {os.fspath(path)!r} does not exist")
    model, input_shape = get_loader(kind)(path)
    return model, tuple(int(s) for s in input_shape)
