"""Files hbnn writes: atomic replacement, and hbnn's self-verifying safetensors files.

Atomic writes go to a temporary sibling, are fsynced and renamed over the destination, so
a crash or a failed write never leaves a half-written file behind and the previous
version stays intact until the new one is complete. The final file gets the permissions
an ordinary ``open(path, "w")`` would give it: those of the file it replaces, else
``0o666`` minus the process umask.

Checkpoints (``hbnn.train.checkpoint``) and packed models (``hbnn.export.format``) are
safetensors files whose metadata holds one JSON header with ``payload_sha256``
(:func:`tensors_sha256`) and ``header_sha256`` (:func:`header_sha256`, over every other
header field, so over the whole content); :func:`seal_header` adds the latter and
:func:`read_verified_safetensors` checks both and the file's structure (no other metadata,
no bytes after the last tensor): one edited byte anywhere is an error, never a silent load.

Example:
    >>> with atomic_open("out/table.md", "w") as fh:     # doctest: +SKIP
    ...     fh.write("| a | b |\\n")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from hbnn.errors import FormatError

if TYPE_CHECKING:  # torch is only needed by tensors_sha256, imported there
    import torch

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "tensors_sha256",
           "HEADER_DIGEST", "header_sha256", "seal_header", "read_verified_safetensors"]

#: The header field holding :func:`header_sha256` of the rest of the header.
HEADER_DIGEST = "header_sha256"

_NEW_FILE_MODE = 0o666  # what open() asks for; the kernel applies the umask


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create ``.<name>.<random>.tmp`` next to ``path`` with ``0o666 & ~umask``; ``(fd, temp path)``.

    ``tempfile.mkstemp`` would force mode 0600; opening with ``O_CREAT | O_EXCL`` and
    mode 0o666 lets the kernel apply the umask exactly as for a plain ``open``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, _NEW_FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"atomic_open: no free temporary name next to {path}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and rename it over ``path``.

    Args:
        path: final destination (missing parent folders are created).
        mode: ``"wb"`` or ``"w"`` (UTF-8 text).

    On any exception the temporary file is removed and ``path`` is untouched. The new file
    keeps the permission bits of the file it replaces; a new path gets ``0o666 & ~umask``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        if os.chmod in os.supports_fd:  # replacing a file: keep its permission bits
            with contextlib.suppress(FileNotFoundError):
                os.chmod(fd, stat.S_IMODE(os.stat(path).st_mode))
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort; not all filesystems allow it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as indented JSON (sorted keys, trailing newline)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def tensors_sha256(tensors: Mapping[str, "torch.Tensor"]) -> str:
    """SHA-256 hex digest over named tensors, independent of their order in the mapping.

    For each name in sorted order the digest takes ``f"{name}|{dtype}|{shape}|"`` (UTF-8,
    e.g. ``"w|torch.float32|(2, 3)|"``) followed by the tensor's raw bytes (C order, native
    byte order). It is the ``payload_sha256`` of checkpoints (``hbnn.train.checkpoint``)
    and packed models (``hbnn.export.format``): changing it breaks every saved file.

    Args:
        tensors: CPU tensors by name.

    Example:
        >>> import torch
        >>> tensors_sha256({"b": torch.zeros(1), "a": torch.ones(2)}) == \\
        ...     tensors_sha256({"a": torch.ones(2), "b": torch.zeros(1)})
        True
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def header_sha256(header: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of a JSON header, every field but :data:`HEADER_DIGEST` itself.

    The digest is over ``json.dumps(fields, sort_keys=True, separators=(",", ":"))`` (UTF-8),
    so it depends on the values only, not on key order or whitespace. Since the header holds
    ``payload_sha256`` (the tensors), the digest covers the whole content of the file.

    Example:
        >>> header_sha256({"a": 1, "b": [2]}) == header_sha256({"b": [2], "a": 1, HEADER_DIGEST: "x"})
        True
    """
    body = {k: v for k, v in header.items() if k != HEADER_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_header(header: Mapping[str, Any]) -> dict:
    """A copy of ``header`` with :data:`HEADER_DIGEST` set to :func:`header_sha256` of it."""
    out = {k: v for k, v in header.items() if k != HEADER_DIGEST}
    out[HEADER_DIGEST] = header_sha256(out)
    return out


def _read_header(data: bytes, key: str, what: str, where: Path, error: type[Exception], recreate: str) -> dict:
    """The JSON header of safetensors bytes, after the structural checks (see the caller)."""
    if len(data) < 8:
        raise error(f"{what} {where} is truncated ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise error(f"{what} {where} is truncated or corrupt (header of {n} bytes, file of {len(data)})")
    try:
        raw = json.loads(data[8:8 + n])
        metadata = raw["__metadata__"]
        header = json.loads(metadata[key])
        ends = [int(v["data_offsets"][1]) for k, v in raw.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError):  # UnicodeDecodeError is a ValueError
        header = None
    if not isinstance(header, dict):
        raise error(f"{where} is corrupt or not an hbnn {what} (no readable {key!r} metadata)")
    if set(metadata) != {key}:
        raise error(f"{what} {where} is corrupt or was edited (unexpected metadata entries)")
    if 8 + n + max(ends, default=0) != len(data):
        raise error(f"{what} {where} is truncated or has trailing bytes")
    if not isinstance(header.get(HEADER_DIGEST), str):
        raise error(f"{what} {where} has no {HEADER_DIGEST}: it was written by an older hbnn or edited; {recreate}")
    if header[HEADER_DIGEST] != header_sha256(header):
        raise error(f"{what} {where} is corrupt or was edited (header digest mismatch)")
    return header


def read_verified_safetensors(path: str | os.PathLike, *, key: str, what: str,
                              error: type[Exception] = FormatError,
                              check: Callable[[dict, Path], None] | None = None,
                              recreate: str = "re-create it with this version"
                              ) -> tuple[bytes, dict, dict[str, "torch.Tensor"]]:
    """Read a safetensors file whose metadata entry ``key`` is a sealed JSON header; verify it.

    In order: read the bytes; check the structure (the safetensors metadata holds only
    ``key``, no bytes follow the last tensor); decode ``__metadata__[key]`` as a JSON
    object and compare its :data:`HEADER_DIGEST` with :func:`header_sha256`; call
    ``check(header, path)`` (the caller's format, version and field checks, before any
    tensor is decoded); load the tensors and compare their :func:`tensors_sha256` with
    ``header["payload_sha256"]``. Together the two digests cover every byte that matters.

    Args:
        path: the file.
        key: the metadata entry holding the JSON header (``"hbnn"``, ``"hbnn-packed"``).
        what: what the file is, for messages (``"checkpoint"``, ``"packed model"``).
        error: the exception type raised for every problem (a one-line message).
        check: validates the decoded header; raises ``error`` itself.
        recreate: how to replace a file without a sealed header (an older hbnn's), for
            the message, e.g. ``"re-create it with `hbnn export RUN --out FILE`"``.

    Returns:
        ``(file bytes, header, tensors on CPU)``.

    Raises:
        error: missing, unreadable, truncated or corrupt file, no readable or no sealed
            header, an edited header, a header ``check`` refuses, unreadable tensors, or a
            checksum mismatch.
    """
    from safetensors.torch import load as st_load

    where = Path(path)
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {where}") from None
    except IsADirectoryError:
        raise error(f"{what} {where} is a directory, not a file") from None
    except OSError as exc:
        raise error(f"cannot read {what} {where}: {exc.strerror}") from None
    header = _read_header(data, key, what, where, error, recreate)
    if check is not None:
        check(header, where)
    try:
        tensors = st_load(data)
    except Exception:  # safetensors raises its own error type for any malformed file
        raise error(f"{what} {where} is truncated or corrupt (unreadable tensors)") from None
    if tensors_sha256(tensors) != header.get("payload_sha256"):
        raise error(f"{what} {where} is corrupt (tensor checksum mismatch)")
    return data, header, tensors


def read_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped).

    Raises:
        error: a line that is not valid JSON or not an object (names the file and line number).
        OSError: the file cannot be read.
    """
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise error(f"{os.fspath(path)} line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise error(f"{os.fspath(path)} line {number}: expected a JSON object")
            records.append(record)
    return records
