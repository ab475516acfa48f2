"""The fuzzer's mutation operators (see ``scripts/fuzz_files.py``).

:func:`make_mutant` ``(originals, kinds, seed, i, dest)`` writes mutant ``i`` under
``dest``; everything it picks comes from ``random.Random(f"{seed}/{i}")``, so the same
originals, seed and index give the same bytes. Operators: byte flips in the header and
the tensor region, truncation, appended bytes, header JSON edits without and with
resealing (:func:`hbnn.io.seal_header`) -- wrong types (bool for int, string, null, list,
dict), NaN/inf, negative, zero, huge numbers, a float for an int, missing and extra keys,
in-range changes, an empty layer list -- and, for checkpoints, step/epoch edits, edited
or missing ``last.json`` and swapped halves (the other step, another run, a float run).
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import struct
from pathlib import Path

from fuzz_originals import join_safetensors, sidecar, split_safetensors

__all__ = ["PACKED_OPS", "CHECKPOINT_OPS", "field_path", "make_mutant"]

def _paths(node, path=()):
    """Every editable location of a JSON value: ``(path, value)``; a long list of scalars is one location."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "header_sha256":
                yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        if len(node) > 8 and all(not isinstance(v, (dict, list)) for v in node):
            return  # mutated as a whole location (a random element)
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def field_path(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "<root>"


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _in_range(rng: random.Random, v):
    """A plausible different value of the same type (the edit a valid, different file would have)."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1 if v < 1 or rng.random() < 0.5 else v - 1 if v > 1 else v + 1
    if isinstance(v, float):
        return v * rng.choice((0.5, 0.9, 1.1, 2.0)) if v else 0.25
    return None


#: value edits: name -> (applies to, new value); "valid" is the only in-range one.
_VALUE_EDITS = {
    "bool_for_int": (lambda v: isinstance(v, int) and not isinstance(v, bool),
                     lambda r, v: bool(v) if r.random() < .5 else not v),
    "string": (lambda v: not isinstance(v, str), lambda r, v: r.choice([str(v), "abc", ""])),
    "null": (lambda v: v is not None, lambda r, v: None),
    "list": (lambda v: not isinstance(v, list), lambda r, v: [v]),
    "dict": (lambda v: not isinstance(v, dict), lambda r, v: {}),
    "nan": (lambda v: isinstance(v, (int, float)), lambda r, v: float("nan")),
    "inf": (lambda v: isinstance(v, (int, float)), lambda r, v: r.choice([math.inf, -math.inf])),
    "negative": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                 lambda r, v: -abs(v) - r.choice([1, 7])),  # in range where the original is negative
    "zero": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0, lambda r, v: 0),
    "huge": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
             lambda r, v: r.choice([2 ** 63, 2 ** 64 + 1, 10 ** 30, 1e308, -(2 ** 63)])),
    "float_for_int": (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda r, v: v + 0.5),
    "in_range": (lambda v: isinstance(v, (int, float)), _in_range),
    "missing_key": (None, None),
    "extra_key": (None, None),
}


def _edit_json(rng: random.Random, header: dict, kind: str) -> tuple[dict, str, str, bool]:
    """Apply one value edit at a random location: ``(new header, field, edit, in range)``."""
    header = copy.deepcopy(header)
    if kind == "packed" and rng.random() < 0.04:
        header["layers"] = []
        return header, "layers", "empty_layers", False
    if kind == "checkpoint" and rng.random() < 0.2:
        field = rng.choice(["step", "epoch", "batch_in_epoch", "best_epoch", "schema_version"])
        candidates = [((field,), header.get(field))]
    else:
        candidates = list(_paths(header))[1:]
    for _ in range(50):
        path, value = rng.choice(candidates)
        edit = rng.choice(list(_VALUE_EDITS))
        parent_path, leaf = path[:-1], path[-1]
        parent = _get(header, parent_path)
        if edit == "missing_key":
            if isinstance(parent, dict):
                del parent[leaf]
                return header, field_path(path), edit, False
            continue
        if edit == "extra_key":
            target = value if isinstance(value, dict) else parent if isinstance(parent, dict) else None
            if target is None:
                continue
            target["zz_extra2" if "zz_extra" in target else "zz_extra"] = rng.choice([1, "x", None, [1, 2]])
            return header, field_path(path), edit, False
        applies, new = _VALUE_EDITS[edit]
        if isinstance(value, list) and len(value) > 8 and applies(value[0]):
            idx = rng.randrange(len(value))
            path, parent, leaf, value = (*path, idx), value, idx, value[idx]
        if not applies(value):
            continue
        new_value = new(rng, value)
        if new_value is None and edit == "in_range":
            continue
        parent[leaf] = new_value
        # zero is valid for some fields (padding, an index): an accepted zero counts as an in-range edit
        return header, field_path(path), edit, edit in ("in_range", "zero") or (edit == "negative" and value < 0)
    return header, "<none>", "no_edit", False


def _byte_edit(rng: random.Random, data: bytes, op: str) -> tuple[bytes, str]:
    (n,) = struct.unpack("<Q", data[:8])
    buf = bytearray(data)
    if op in ("flip_header", "flip_tensor"):
        lo, hi = (0, 8 + n) if op == "flip_header" else (8 + n, len(data))
        where = [rng.randrange(lo, hi) for _ in range(rng.choice([1, 1, 2, 3]))]
        for at in where:
            buf[at] ^= 1 << rng.randrange(8)
        return bytes(buf), f"bytes {where}"
    if op == "truncate":
        cut = rng.choice([rng.randrange(0, 8 + n), rng.randrange(8 + n, len(data)), len(data) - 1])
        return data[:cut], f"to {cut} of {len(data)} bytes"
    extra = rng.choice([b"\0", b"\0" * 8, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))])
    return data + extra, f"+{len(extra)} bytes"


PACKED_OPS = {"flip_header": 2, "flip_tensor": 2, "truncate": 1, "append": 1, "edit_unsealed": 2, "edit_resealed": 8}
CHECKPOINT_OPS = {"flip_header": 2, "flip_tensor": 2, "truncate": 1, "append": 1, "edit_unsealed": 1,
                  "edit_resealed": 6, "sidecar_edit": 2, "sidecar_missing": 1, "swap_halves": 3}


def _weighted(rng: random.Random, table: dict) -> str:
    return rng.choices(list(table), weights=list(table.values()))[0]


def _resealed(rng: random.Random, data: bytes, kind: str, seal: bool) -> tuple[bytes, dict, dict]:
    from hbnn.io import seal_header

    outer, key, inner, rest = split_safetensors(data)
    new, field, edit, ok = _edit_json(rng, inner, kind)
    new = seal_header(new) if seal else new
    return join_safetensors(outer, key, new, rest), new, {"field": field, "edit": edit, "in_range": ok and seal}


def make_mutant(originals: dict, kinds: list[str], seed: int, i: int, dest: Path) -> dict:
    """Write mutant ``i`` under ``dest`` (a file or run directory); its description (``path`` = what to probe)."""
    rng = random.Random(f"{seed}/{i}")
    kind = kinds[rng.randrange(len(kinds))]
    name = rng.choice(sorted(n for n, o in originals.items() if o["kind"] == kind))
    orig = originals[name]
    op = _weighted(rng, PACKED_OPS if kind == "packed" else CHECKPOINT_OPS)
    case = {"i": i, "kind": kind, "original": name, "op": op, "field": None, "edit": None, "in_range": False}
    if dest.exists():
        shutil.rmtree(dest)
    if kind == "packed":
        dest.mkdir(parents=True)
        target = dest / "model.hbnn"
        data = Path(orig["path"]).read_bytes()
    else:
        shutil.copytree(orig["path"], dest)
        target = dest / "last.safetensors"
        data = target.read_bytes()
    case["path"] = str(target if kind == "packed" else dest)
    if op in ("flip_header", "flip_tensor", "truncate", "append"):
        new, case["field"] = _byte_edit(rng, data, op)
        target.write_bytes(new)
    elif op in ("edit_unsealed", "edit_resealed"):
        new, header, info = _resealed(rng, data, kind, op == "edit_resealed")
        case.update(info)
        target.write_bytes(new)
        if kind == "checkpoint" and op == "edit_resealed":
            side = rng.choice(["stale", "both", "none"])
            case["edit"] = f"{info['edit']}+sidecar_{side}"
            if side == "both":
                (dest / "last.json").write_bytes(sidecar(header, new, json.loads((dest / "last.json").read_text())))
            elif side == "none":
                (dest / "last.json").unlink()
    elif op == "sidecar_edit":
        side = json.loads((dest / "last.json").read_text())
        if rng.random() < 0.2:
            text = (dest / "last.json").read_bytes()
            (dest / "last.json").write_bytes(text[: rng.randrange(len(text))])
            case["field"] = "truncated"
        else:
            from hbnn.io import seal_header

            side, case["field"], case["edit"], _ = _edit_json(rng, side, "checkpoint")
            if rng.random() < 0.7:
                side, case["edit"] = seal_header(side), f"{case['edit']}+resealed"
            (dest / "last.json").write_text(json.dumps(side, indent=2, sort_keys=True, default=str))
    elif op == "sidecar_missing":
        (dest / "last.json").unlink()
    elif op == "swap_halves":
        which = rng.choice(["older", "other", "float"])
        half = rng.choice(["last.safetensors", "last.json", "config.yaml"] if which != "older"
                          else ["last.safetensors", "last.json"])
        shutil.copyfile(Path(orig[which]) / half, dest / half)
        case["field"] = f"{half} from {which}"
        # the older step's tensors beside the newer JSON cannot come from an interrupted save
    return case
