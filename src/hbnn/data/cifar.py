"""Reader for CIFAR-10 in both official formats, extracted or still packed.

* **python**: ``cifar-10-batches-py/{data_batch_1..5, test_batch}``, each a pickled dict
  with ``data`` (uint8 ``[10000, 3072]``, planes R, G, B of 32x32, row-major) and
  ``labels`` (10000 ints); the archive is ``cifar-10-python.tar.gz``.
* **binary**: ``cifar-10-batches-bin/{data_batch_1..5, test_batch}.bin``, records of
  3073 bytes (label, then the same 3072 pixel bytes); archive ``cifar-10-binary.tar.gz``.

Archives are read member by member from the tar stream, never extracted to disk.
Pickles are loaded with :class:`SafeUnpickler`, which resolves only the few globals
NumPy arrays need; anything else (a class, ``os.system``, ...) is refused. Every batch is
checked: a dict with ``data`` (uint8 ``[N, 3072]``, ``N >= 1``) and ``labels`` (``N``
integers, a list or a 1-d integer array; bools are not labels), labels in ``[0, 10)``;
binary batches are whole 3073-byte records. Every problem is one
:class:`hbnn.errors.DatasetError` line naming the file (``archive:member`` inside a tar),
the problem and the fix (re-download the archive).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from hbnn.errors import DatasetError

__all__ = [
    "CIFAR10_CLASSES",
    "ForbiddenGlobal",
    "SafeUnpickler",
    "safe_unpickle",
    "decode_python_batch",
    "decode_binary_batch",
    "find_cifar10_source",
    "load_cifar10_split",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_PY_DIR, _BIN_DIR = "cifar-10-batches-py", "cifar-10-batches-bin"
_PY_TAR, _BIN_TAR = "cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"
_RECORD = 1 + 3 * 32 * 32
_FIX = "re-download the CIFAR-10 archive"


def _allowed_globals() -> dict[tuple[str, str], object]:
    # Take NumPy's own reconstructors from its reduce protocol instead of importing
    # private modules, so this works on NumPy 1.x (numpy.core) and 2.x (numpy._core).
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _codecs_encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside :class:`SafeUnpickler`'s allow-list."""


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes at protocol <= 2 as _codecs.encode(str, "latin1"); only
    # that text encoding is needed, so only text encodings are served.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "ascii"):
        raise ForbiddenGlobal(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode(encoding)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for data-only pickles: dicts, lists, str/bytes, numbers and NumPy arrays.

    ``find_class`` serves only NumPy's array/dtype reconstructors (both the ``numpy.core``
    and ``numpy._core`` spellings) and ``_codecs.encode`` for text encodings; every other
    global raises :class:`ForbiddenGlobal` (a ``pickle.UnpicklingError``), so loading
    never runs foreign code.
    """

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str):  # noqa: D102 - documented on the class
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"refusing to load global {module}.{name}") from None


def safe_unpickle(data: bytes, source: str):
    """Unpickle ``data`` with :class:`SafeUnpickler` (``encoding="latin1"`` for Python 2 pickles).

    Raises:
        DatasetError: a forbidden global or a malformed pickle, naming ``source``.
    """
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except ForbiddenGlobal as exc:
        raise DatasetError(f"{source}: not a CIFAR-10 data pickle ({exc}); {_FIX}") from None
    except Exception as exc:  # truncated or garbled pickles raise many types; all are the file's fault
        what = (str(exc).splitlines() or [""])[0][:120]
        raise DatasetError(f"{source}: corrupt or truncated pickle ({type(exc).__name__}: {what}); {_FIX}") from None


def _field(batch: dict, key: str):
    for candidate in (key, key.encode()):
        if candidate in batch:
            return batch[candidate]
    return None


def _labels(labels: object, count: int, source: str) -> np.ndarray:
    """``labels`` (a list of ints or a 1-d integer array) as int64 ``[count]``, each in ``[0, 10)``."""
    if isinstance(labels, (list, tuple)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        array = np.array([int(v) for v in labels], dtype=object)  # object: no overflow before the range check
    elif isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.ndim == 1:
        array = labels
    else:
        raise DatasetError(f"{source}: 'labels' must be a list of integers or a 1-d integer array; {_FIX}")
    if len(array) != count:
        raise DatasetError(f"{source}: 'labels' must hold one label per image ({count}), got {len(array)}; {_FIX}")
    bad = [int(v) for v in array if not 0 <= int(v) < 10]
    if bad:
        raise DatasetError(f"{source}: label {bad[0]} outside [0, 10); {_FIX}")
    return array.astype(np.int64)


def decode_python_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one python-format batch into ``(uint8 [N, 3, 32, 32], int64 [N])`` (see the module)."""
    batch = safe_unpickle(data, source)
    if not isinstance(batch, dict):
        raise DatasetError(f"{source}: expected a pickled dict, got {type(batch).__name__}; {_FIX}")
    pixels, labels = _field(batch, "data"), _field(batch, "labels")
    if (not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2
            or pixels.shape[1] != 3072 or pixels.shape[0] < 1):
        raise DatasetError(f"{source}: 'data' must be a uint8 array of shape [N, 3072] with N >= 1; {_FIX}")
    return np.ascontiguousarray(pixels).reshape(-1, 3, 32, 32), _labels(labels, pixels.shape[0], source)


def decode_binary_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one binary-format batch (3073-byte records) into ``(uint8 [N, 3, 32, 32], int64 [N])``."""
    if len(data) == 0 or len(data) % _RECORD:
        raise DatasetError(
            f"{source}: truncated CIFAR-10 binary batch ({len(data)} bytes, not a multiple of {_RECORD}); {_FIX}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), _labels(records[:, 0], len(records), source)


def _member_names(split: str, binary: bool) -> list[str]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return [n + ".bin" for n in names] if binary else names


def find_cifar10_source(data_dir: str | os.PathLike) -> tuple[Path, bool]:
    """Locate CIFAR-10 in ``data_dir``.

    Looks, in order, for ``cifar-10-batches-py/``, ``data_dir`` itself holding python
    batches, ``cifar-10-python.tar.gz``, ``cifar-10-batches-bin/``, ``data_dir`` holding
    ``*.bin`` batches, ``cifar-10-binary.tar.gz``. ``data_dir`` may also be an archive.

    Returns:
        ``(path, binary)``: a folder or ``.tar.gz`` file, and whether it is the binary format.

    Raises:
        DatasetError: nothing found.
    """
    root = Path(data_dir)
    if root.is_file():
        return root, "binary" in root.name
    candidates = [
        (root / _PY_DIR, False, True),
        (root, False, (root / "test_batch").is_file() or (root / "data_batch_1").is_file()),
        (root / _PY_TAR, False, True),
        (root / _BIN_DIR, True, True),
        (root, True, (root / "test_batch.bin").is_file() or (root / "data_batch_1.bin").is_file()),
        (root / _BIN_TAR, True, True),
    ]
    for path, binary, plausible in candidates:
        if plausible and path.exists():
            return path, binary
    raise DatasetError(
        f"{root}: no CIFAR-10 found; expected {_PY_DIR}/, {_PY_TAR}, {_BIN_DIR}/ or {_BIN_TAR} "
        "(from https://www.cs.toronto.edu/~kriz/cifar.html)"
    )


def _read_members_from_dir(folder: Path, names: list[str]) -> dict[str, tuple[bytes, str]]:
    out = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DatasetError(f"{folder}: missing CIFAR-10 batch {name}; {_FIX}")
        try:
            out[name] = (path.read_bytes(), str(path))
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return out


def _read_members_from_tar(archive: Path, names: list[str]) -> dict[str, tuple[bytes, str]]:
    wanted, out = set(names), {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # stream once; batches are read in archive order
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in out:
                    out[base] = (tar.extractfile(member).read(), f"{archive}:{member.name}")
                    if len(out) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(f"{archive}: corrupt or truncated archive ({exc}); {_FIX}") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise DatasetError(f"{archive}: archive lacks CIFAR-10 batch {missing[0]}; {_FIX}")
    return out


def load_cifar10_split(data_dir: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the ``"train"`` (50000 images) or ``"test"`` (10000) split of CIFAR-10.

    Args:
        data_dir: see :func:`find_cifar10_source`.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: uint8 ``[N, 3, 32, 32]`` and int64 ``[N]``, batches concatenated
        in order ``data_batch_1 .. data_batch_5``.

    Raises:
        DatasetError: missing, truncated or malformed batches, or labels outside ``[0, 10)``.
    """
    source, binary = find_cifar10_source(data_dir)
    names = _member_names(split, binary)
    reader = _read_members_from_tar if source.is_file() else _read_members_from_dir
    raw = reader(source, names)
    decode = decode_binary_batch if binary else decode_python_batch
    images, labels = [], []
    for name in names:
        data, where = raw[name]
        x, y = decode(data, where)  # labels checked there
        images.append(x)
        labels.append(y)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
