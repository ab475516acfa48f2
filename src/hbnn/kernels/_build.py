"""Just-in-time build of the C kernels (``csrc/hbnn_kernels.c``) into a cached shared library.

Nothing here runs at import time.  The first kernel call (or ``hbnn.kernels.build()``,
``hbnn kernels build``) runs ``$HBNN_CC (or $CC, or cc) -O3 -fopenmp -ffp-contract=off
-shared -fPIC`` once, printing one notice on stderr, and caches the library under
``$HBNN_CACHE_DIR`` (default ``~/.cache/hbnn/kernels``) in a folder named by a hash of the
sources, the compiler's identity and the flags.  The library is written to a temporary
name and renamed into place, so concurrent processes never load a half-written file.

``$HBNN_KERNELS`` (read at every :func:`load`) picks what happens:

* ``auto`` (default): build on first use; no compiler or a failed build -> ``None`` after
  one warning, and callers use the pure torch/numpy paths (bit-identical results);
* ``off``: never compile or load C; :func:`load` returns ``None`` silently;
* ``require``: a missing compiler or failed build raises :class:`~hbnn.errors.ConfigError`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

from hbnn.errors import ConfigError

__all__ = ["ABI_VERSION", "ENV", "MODES", "mode", "cache_dir", "compiler", "load", "build_error", "library_path",
           "compiled_now", "cached_library"]

ABI_VERSION = 6
_SRC_DIR = Path(__file__).resolve().parent / "csrc"
_SOURCES = ("hbnn_kernels.c", "gemm_body.c", "dense_body.c", "prep_body.c", "tap_body.c", "pack_body.c",
            "gemm_portable.c", "gemm_avx2.c", "gemm_avx512.c", "select_body.c")
_FLAGS = ("-O3", "-std=gnu11", "-ffp-contract=off", "-shared", "-fPIC")
_LIB_NAME = "libhbnn_kernels.so"
_FLAG_SETS = (("-fopenmp", *_FLAGS), _FLAGS)  # OpenMP first; a compiler without it still gets 1 thread

ENV = "HBNN_KERNELS"
MODES = ("auto", "off", "require")

_lock = threading.Lock()
_state: dict[str, object] = {}


def mode() -> str:
    """``$HBNN_KERNELS`` (``auto`` when unset or empty): one of :data:`MODES`.

    Raises:
        ConfigError: any other value.
    """
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in MODES:
        raise ConfigError(f"{ENV}: expected one of {', '.join(MODES)}, got {os.environ[ENV]!r}")
    return value


def compiler() -> list[str]:
    """The C compiler command: ``$HBNN_CC``, else ``$CC``, else ``cc``."""
    return shlex.split(os.environ.get("HBNN_CC") or os.environ.get("CC") or "cc")


def cache_dir() -> Path:
    """Root of the build cache: ``$HBNN_CACHE_DIR`` or ``~/.cache/hbnn/kernels``."""
    env = os.environ.get("HBNN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hbnn" / "kernels"


def _compiler_id(cc: list[str]) -> str:
    out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def _key(cc: list[str], cc_id: str, flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode() + b"\0" + (_SRC_DIR / name).read_bytes())
    h.update("\0".join([*cc, cc_id, *flags]).encode())
    return h.hexdigest()[:16]


def _compile(cc: list[str], flags: tuple[str, ...], out: Path) -> None:
    """Compile into a temporary sibling of ``out``, then rename it into place (atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [*cc, *flags, str(_SRC_DIR / "hbnn_kernels.c"), "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed: {res.stderr.strip()[:2000]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _notice() -> None:
    """The one line on stderr that says a build (seconds to a minute) is starting."""
    print(f"hbnn: compiling C kernels (one time, cached in {cache_dir()}) ...", file=sys.stderr, flush=True)


def _build_and_load() -> tuple[ctypes.CDLL, Path, bool]:
    """``(library, its path, whether this call compiled it)``; RuntimeError when nothing loads."""
    cc = compiler()
    try:
        cc_id = _compiler_id(cc)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"no usable C compiler {shlex.join(cc)!r}: {exc}") from exc
    errors, compiled = [], False
    for flags in _FLAG_SETS:
        path = cache_dir() / _key(cc, cc_id, flags) / _LIB_NAME
        try:
            if not path.exists():
                if not compiled:
                    _notice()
                compiled = True
                _compile(cc, flags, path)
            lib = ctypes.CDLL(str(path))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            continue
        if lib.hbnn_abi_version() != ABI_VERSION:
            errors.append(f"{path}: ABI {lib.hbnn_abi_version()} != {ABI_VERSION}")
            continue
        return lib, path, compiled
    raise RuntimeError("; ".join(errors))


def _first_line(text: str, limit: int = 400) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line if len(line) <= limit else line[:limit] + " ..."


def load(*, require: bool = False) -> ctypes.CDLL | None:
    """Return the loaded kernel library, building it on first call; ``None`` if off or unavailable.

    The outcome of the build is memoised per process; in ``auto`` mode a failure warns once
    and is then silent.

    Args:
        require: raise instead of returning ``None`` on a failed build (as ``$HBNN_KERNELS=require``).

    Raises:
        ConfigError: ``$HBNN_KERNELS`` is invalid, or the build failed in ``require`` mode.
    """
    how = mode()
    if how == "off":
        return None
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"], _state["path"], _state["compiled"] = _build_and_load()
                _state["error"] = None
            except RuntimeError as exc:
                _state.update(lib=None, path=None, compiled=False, error=str(exc))
        if _state["lib"] is None:
            why = _first_line(str(_state["error"]))
            if require or how == "require":
                raise ConfigError(f"{ENV}=require: the C kernels did not build ({why}); install a C compiler "
                                  f"(or set HBNN_CC), or set {ENV}=auto to fall back to the pure paths")
            if not _state.get("warned"):
                _state["warned"] = True
                warnings.warn(
                    f"hbnn.kernels: C kernels unavailable, using the pure-torch fallback ({why}; "
                    f"{ENV}=off silences this)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _state["lib"]  # type: ignore[return-value]


def build_error() -> str | None:
    """Why the C kernels are unavailable (``$HBNN_KERNELS=off``, or :func:`load` failed), else ``None``."""
    if mode() == "off":
        return f"disabled by {ENV}=off"
    return _state.get("error")  # type: ignore[return-value]


def library_path() -> Path | None:
    """Path of the library this process loaded, else ``None``."""
    return _state.get("path")  # type: ignore[return-value]


def compiled_now() -> bool:
    """Whether this process compiled the library (rather than loading a cached build)."""
    return bool(_state.get("compiled"))


def cached_library() -> Path | None:
    """A cached build for the current compiler and sources, without building or loading; else ``None``.

    Runs ``$CC --version`` (to name the cache folder); ``None`` when there is no compiler.
    """
    cc = compiler()
    try:
        cc_id = _compiler_id(cc)
    except (OSError, subprocess.SubprocessError):
        return None
    for flags in _FLAG_SETS:
        path = cache_dir() / _key(cc, cc_id, flags) / _LIB_NAME
        if path.exists():
            return path
    return None


def _reset() -> None:
    """Forget the memoised library (tests only; a loaded library stays mapped)."""
    with _lock:
        _state.clear()
