"""hbnn.io: atomic replacement (content, failure, permissions), the write helpers, tensors_sha256."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys

import pytest
import torch

import hbnn.io
from hbnn.io import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text, tensors_sha256

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """``umask(value)`` sets the process umask for the test and restores it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def test_replaces_content_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with atomic_open(path) as fh:
        fh.write(b"new")
        assert path.read_bytes() == b"old"  # nothing visible before the with-block ends
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


@pytest.mark.parametrize("mode", ["wb", "w"])
def test_exception_inside_the_block_keeps_the_original(tmp_path, mode):
    path = tmp_path / "f.txt"
    original = b"line one\n\x00\xffbinary tail"
    path.write_bytes(original)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path, mode) as fh:
            fh.write(b"partial" if mode == "wb" else "partial")
            raise RuntimeError("boom")
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_failed_fsync_keeps_the_original(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"v": 1})
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hbnn.io.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write_json(path, {"v": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_creates_missing_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    atomic_write_text(path, "x")
    assert path.read_text() == "x"


def test_bad_mode_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w', got 'a'"):
        with atomic_open(tmp_path / "f", "a"):
            pass
    assert list(tmp_path.iterdir()) == []


@posix_only
@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_gets_0666_minus_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_bytes(tmp_path / "new.bin", b"x")
    assert _mode(tmp_path / "new.bin") == expected


@posix_only
@pytest.mark.parametrize("existing", [0o600, 0o640, 0o755, 0o444])
def test_replaced_file_keeps_its_mode(tmp_path, umask, existing):
    umask(0o022)
    path = tmp_path / "f.txt"
    path.write_text("old")
    path.chmod(existing)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == existing


def test_text_is_utf8_and_bytes_are_verbatim(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "µ-bits ✓\n")
    assert (tmp_path / "t.txt").read_bytes() == "µ-bits ✓\n".encode("utf-8")
    data = bytes(range(256))
    atomic_write_bytes(tmp_path / "b.bin", data)
    assert (tmp_path / "b.bin").read_bytes() == data


def test_json_is_sorted_indented_with_a_newline(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"b": [1, 2], "a": {"y": 1.5, "x": None}})
    text = path.read_text()
    assert text == json.dumps({"a": {"x": None, "y": 1.5}, "b": [1, 2]}, indent=2) + "\n"
    assert json.loads(text) == {"a": {"x": None, "y": 1.5}, "b": [1, 2]}


def _tensors() -> dict:
    return {"b/x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.tensor([True, False, True]),
            "c": torch.tensor([-1, 2], dtype=torch.int8)}


def test_tensors_sha256_is_the_documented_definition():
    digest = hashlib.sha256()
    digest.update(b"a|torch.bool|(3,)|" + bytes([1, 0, 1]))
    digest.update(b"b/x|torch.float32|(2, 3)|" + torch.arange(6, dtype=torch.float32).numpy().tobytes())
    digest.update(b"c|torch.int8|(2,)|" + bytes([255, 2]))
    assert tensors_sha256(_tensors()) == digest.hexdigest()
    # Pinned: saved checkpoints and packed files store this digest; it must never change.
    assert tensors_sha256(_tensors()) == "02464d09916d2300f8b7bd240bd4e4dae4a4724dc1a2f7db3c13f7d88439081a"


def test_tensors_sha256_ignores_order_and_layout_but_not_content():
    t = _tensors()
    reordered = {k: t[k] for k in reversed(list(t))}
    reordered["b/x"] = t["b/x"].t().contiguous().t()  # same values, column-major storage
    assert tensors_sha256(reordered) == tensors_sha256(t)
    for change in ({"c": torch.tensor([-1, 3], dtype=torch.int8)}, {"c": torch.tensor([-1, 2], dtype=torch.int16)},
                   {"b/x": t["b/x"].reshape(3, 2)}, {"d": torch.zeros(0)}):
        assert tensors_sha256({**t, **change}) != tensors_sha256(t)


class _Err(ValueError):
    pass


def _write_verified(path, header: dict, tensors: dict, key: str = "k") -> bytes:
    from safetensors.torch import save

    from hbnn.io import seal_header

    data = save(tensors, metadata={key: json.dumps(seal_header({**header, "payload_sha256": tensors_sha256(tensors)}))})
    path.write_bytes(data)
    return data


def test_read_verified_safetensors_round_trip_and_check_order(tmp_path):
    from hbnn.io import read_verified_safetensors

    path, seen = tmp_path / "f.st", []
    data = _write_verified(path, {"format": "x"}, _tensors())
    got_data, header, tensors = read_verified_safetensors(path, key="k", what="thing", error=_Err,
                                                          check=lambda h, where: seen.append((h["format"], where)))
    assert got_data == data and header["format"] == "x" and seen == [("x", path)]
    assert set(tensors) == set(_tensors()) and all(torch.equal(tensors[k], v) for k, v in _tensors().items())

    def refuse(h, where):
        raise _Err(f"{where}: refused")

    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF  # breaks the checksum, but check() runs first
    path.write_bytes(bytes(corrupt))
    with pytest.raises(_Err, match="refused"):
        read_verified_safetensors(path, key="k", what="thing", error=_Err, check=refuse)
    with pytest.raises(_Err, match=r"^thing .* is corrupt \(tensor checksum mismatch\)$"):
        read_verified_safetensors(path, key="k", what="thing", error=_Err)


@pytest.mark.parametrize("damage,message", [
    (lambda p, d: p.unlink(), "thing not found: "),
    (lambda p, d: p.write_bytes(d[:5]), "is truncated (5 bytes)"),
    (lambda p, d: p.write_bytes(d[:40]), "is truncated or corrupt (header of"),
    (lambda p, d: p.write_bytes(d[:-3]), "is truncated or has trailing bytes"),
    (lambda p, d: p.write_bytes(d + b"\0"), "is truncated or has trailing bytes"),
    (lambda p, d: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      "), "no readable 'k' metadata"),
])
def test_read_verified_safetensors_errors_are_one_line(tmp_path, damage, message):
    from hbnn.io import read_verified_safetensors

    path = tmp_path / "f.st"
    damage(path, _write_verified(path, {}, _tensors()))
    with pytest.raises(_Err) as exc:
        read_verified_safetensors(path, key="k", what="thing", error=_Err)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def _resave(path, header: dict, tensors: dict, metadata_extra: dict | None = None) -> None:
    from safetensors.torch import save

    path.write_bytes(save(tensors, metadata={"k": json.dumps(header), **(metadata_extra or {})}))


def test_header_digest_covers_every_field_and_the_structure(tmp_path):
    """Any edit of a header field (without resealing), an unsealed header or a foreign metadata
    entry is refused before the caller's check runs; a resealed edit passes to the check."""
    from hbnn.io import HEADER_DIGEST, header_sha256, read_verified_safetensors, seal_header

    path, seen = tmp_path / "f.st", []
    _write_verified(path, {"format": "x", "pad": [1, 1], "min": -1.0}, _tensors())
    _, header, tensors = read_verified_safetensors(path, key="k", what="thing", error=_Err)
    assert header[HEADER_DIGEST] == header_sha256(header)
    for field, value in (("pad", [1, 2]), ("min", float("nan")), ("format", "y"), ("new", True)):
        _resave(path, {**header, field: value}, tensors)
        with pytest.raises(_Err, match=r"is corrupt or was edited \(header digest mismatch\)$"):
            read_verified_safetensors(path, key="k", what="thing", error=_Err, check=lambda h, w: seen.append(h))
    unsealed = {k: v for k, v in header.items() if k != HEADER_DIGEST}
    _resave(path, unsealed, tensors)
    with pytest.raises(_Err, match="has no header_sha256: it was written by an older hbnn or edited"):
        read_verified_safetensors(path, key="k", what="thing", error=_Err)
    _resave(path, header, tensors, {"other": "1"})
    with pytest.raises(_Err, match="unexpected metadata entries"):
        read_verified_safetensors(path, key="k", what="thing", error=_Err)
    assert seen == []
    _resave(path, seal_header({**header, "pad": [1, 2]}), tensors)
    _, edited, _ = read_verified_safetensors(path, key="k", what="thing", error=_Err, check=lambda h, w: seen.append(h))
    assert edited["pad"] == [1, 2] and len(seen) == 1


def test_read_jsonl_objects_blank_lines_and_errors(tmp_path):
    from hbnn.io import read_jsonl

    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(KeyError, match="line 2: expected a JSON object"):
        read_jsonl(path, KeyError)
    path.write_text('{"a": 1}\n\n{oops\n')
    with pytest.raises(ValueError, match="line 3: not valid JSON"):
        read_jsonl(path)
