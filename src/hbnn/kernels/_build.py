"""Just-in-time build of the C kernels (``csrc/hbnn_kernels.c``) into a cached shared library.

Nothing here runs at import time.  The first kernel call runs
``$HBNN_CC (or $CC, or cc) -O3 -fopenmp -ffp-contract=off -shared -fPIC`` once and caches
the library under ``$HBNN_CACHE_DIR`` (default ``~/.cache/hbnn/kernels``) in a folder named
by a hash of the sources, the compiler's identity and the flags.  The library is written
to a temporary name and renamed into place, so concurrent processes never load a
half-written file.  If there is no compiler or the build fails, :func:`load` returns
``None`` after one warning and callers fall back to the pure-torch kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["ABI_VERSION", "cache_dir", "compiler", "load", "build_error"]

ABI_VERSION = 5
_SRC_DIR = Path(__file__).resolve().parent / "csrc"
_SOURCES = ("hbnn_kernels.c", "gemm_body.c", "pack_body.c", "gemm_portable.c", "gemm_avx2.c", "gemm_avx512.c", "select_body.c")
_FLAGS = ("-O3", "-std=gnu11", "-ffp-contract=off", "-shared", "-fPIC")
_LIB_NAME = "libhbnn_kernels.so"

_lock = threading.Lock()
_state: dict[str, object] = {}


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


def _build_and_load() -> ctypes.CDLL:
    cc = compiler()
    try:
        cc_id = _compiler_id(cc)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"no usable C compiler {shlex.join(cc)!r}: {exc}") from exc
    errors = []
    # OpenMP first; a compiler without it (e.g. plain clang on macOS) still gets 1 thread.
    for flags in (("-fopenmp", *_FLAGS), _FLAGS):
        path = cache_dir() / _key(cc, cc_id, flags) / _LIB_NAME
        try:
            if not path.exists():
                _compile(cc, flags, path)
            lib = ctypes.CDLL(str(path))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            continue
        if lib.hbnn_abi_version() != ABI_VERSION:
            errors.append(f"{path}: ABI {lib.hbnn_abi_version()} != {ABI_VERSION}")
            continue
        return lib
    raise RuntimeError("; ".join(errors))


def load() -> ctypes.CDLL | None:
    """Return the loaded kernel library, building it on first call; ``None`` if unavailable.

    The outcome is memoised per process; a failure warns once and is then silent.
    """
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _build_and_load()
                _state["error"] = None
            except RuntimeError as exc:
                _state["lib"] = None
                _state["error"] = str(exc)
                warnings.warn(
                    f"hbnn.kernels: C kernels unavailable, using the pure-torch fallback ({exc})",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _state["lib"]  # type: ignore[return-value]


def build_error() -> str | None:
    """Why the C kernels are unavailable (after :func:`load` failed), else ``None``."""
    return _state.get("error")  # type: ignore[return-value]


def _reset() -> None:
    """Forget the memoised library (tests only; a loaded library stays mapped)."""
    with _lock:
        _state.clear()
