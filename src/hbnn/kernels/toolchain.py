"""The C toolchain behind the kernels: ``$HBNN_KERNELS``, building ahead of time, status.

The C kernels are one shared library that carries every SIMD variant (portable, AVX2,
AVX-512; the best one this CPU supports is picked per call). It is compiled on first use
and cached (:mod:`hbnn.kernels._build`); :func:`build` does that now, so the first training
step or inference does not pay for it (``hbnn kernels build`` on the command line).

``$HBNN_KERNELS`` decides whether C runs at all:

==========  ==========================================================================
``auto``    (default) build on first use; no compiler or a failed build: one warning,
            then the pure torch/numpy paths
``off``     never compile or load C; the pure paths (results are identical: every C
            path is bit-exact against them)
``require`` a missing compiler or a failed build raises :class:`~hbnn.errors.ConfigError`
==========  ==========================================================================
"""

from __future__ import annotations

import shlex

from hbnn.errors import ConfigError
from hbnn.kernels import _build
from hbnn.kernels.dispatch import cpu_features

__all__ = ["MODES", "mode", "build", "status", "format_status"]

MODES = _build.MODES
mode = _build.mode


def _base() -> dict:
    return {"mode": _build.mode(), "compiler": shlex.join(_build.compiler()), "cache_dir": str(_build.cache_dir())}


def build() -> dict:
    """Compile the C kernels for this machine now, or load the cached build, and report them.

    Returns:
        ``{"mode", "compiler", "cache_dir", "library": path, "compiled": True if this call
        compiled it (False: loaded from the cache), "variants": supported variants,
        "selected": the variant calls use, "features": CPU features}``.

    Raises:
        ConfigError: ``$HBNN_KERNELS`` is ``off`` or invalid, or the build failed (one line).
    """
    info = _base()
    if info["mode"] == "off":
        raise ConfigError(f"{_build.ENV}=off: the C kernels are disabled; unset it (or set auto or require) "
                          "to build them")
    compiled_before = _build.library_path() is not None
    _build.load(require=True)
    info.update(library=str(_build.library_path()), compiled=_build.compiled_now() and not compiled_before)
    info.update(cpu_features())
    return info


def status() -> dict:
    """What :func:`build` would report, without compiling: ``library`` is ``None`` when no build
    is cached for this compiler and these sources (or ``$HBNN_KERNELS=off``)."""
    info = _base()
    if info["mode"] != "off" and (_build.library_path() or _build.cached_library()):
        return build()  # cached: loading it compiles nothing
    info.update(library=None, compiled=False, variants=[], selected=None, features={})
    return info


def format_status(info: dict) -> str:
    """Three lines for a person: the variant in use, the library, the mode and compiler."""
    if info["library"] is None:
        head = ("C kernels: off, using the pure torch/numpy paths" if info["mode"] == "off"
                else "C kernels: not built yet (built on first use, or now with `hbnn kernels build`)")
        where = "library:   none"
    else:
        head = f"C kernels: {info['selected']} (this CPU supports {', '.join(info['variants'])})"
        where = f"library:   {info['library']} ({'compiled now' if info['compiled'] else 'cached'})"
    how = f"mode:      {_build.ENV}={info['mode']}, compiler {info['compiler']}, cache {info['cache_dir']}"
    return "\n".join([head, where, how])
