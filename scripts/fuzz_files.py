#!/usr/bin/env python
"""Mutation fuzzer for the files hbnn reads: packed models and checkpoints (run directories).

``python scripts/fuzz_files.py N [--seed S] [--kinds packed,checkpoint] [--out FILE.json]``

1. Builds small valid originals in a scratch folder: a fabricated 28x28 10-class IDX
   dataset; three tiny ``hbnn train`` runs (a W1.4 A1.4 cifar_fc4 run checkpointed after
   epoch 1 and 2, the same recipe with another seed, a float run); a packed file exported
   from the first (``hbnn export``: folded conv/BN, hardtanh, max-pool, adaptive pool,
   flatten) and one from a hand-built chain (float conv, kept batch norms, relu, binarized
   conv and linear, avg-pool, dropout, linear).
2. Makes ``N`` mutants, deterministic given ``--seed`` (case ``i`` uses ``Random(f"{seed}/{i}")``):
   byte flips in the header and the tensor region, truncation, appended bytes, header
   JSON edits without and with resealing (:func:`hbnn.io.seal_header`) -- wrong types
   (bool for int, string, null, list, dict), NaN/inf, negative, zero, huge numbers, a
   float for an int, missing and extra keys, in-range changes, an empty layer list --
   and, for checkpoints, step/epoch edits, edited or missing ``last.json`` and swapped
   halves (the other step, another run, a float run).
3. Probes every mutant in worker processes (``--jobs``) under a per-case time limit:
   packed -- :func:`hbnn.export.load` plus a forward pass on a fixed input, and through
   :func:`hbnn.cli.main` ``infer`` and ``hw estimate --packed``; checkpoint --
   :func:`hbnn.train.checkpoint.load_checkpoint` plus a restore into the model, optimizer
   and scheduler built from the original config, and ``summary`` / ``eval``. CLI probes run
   for resealed mutants, for mutants the in-process loader did not refuse, and for a 10%
   sample of the rest.

Each case gets the worst class of its probes (``CLASSES``, best first): ``refused-clean``
(an hbnn error, or exit 2 with one stderr line), ``loaded-identical`` (output, or restored
state and metadata, bit-identical to the original's), ``valid-different`` (a resealed
in-range edit accepted: a valid different file), ``SILENT`` (loaded, different, not a
valid edit), ``TRACEBACK`` (another exception type, a multi-line message, an exit code
outside {0, 2}), ``CRASH`` / ``HANG`` (the worker died / ran past ``--timeout``).
``accepted_invalid`` counts identical loads of values the format forbids (bool for int,
NaN, ...): not a failure, a hint. Prints a JSON summary; exits 1 on any SILENT,
TRACEBACK, CRASH or HANG (3 if an original fails its own probes).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import hashlib
import io
import json
import math
import os
import random
import selectors
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

__all__ = ["CLASSES", "FAILURES", "fabricate_dataset", "build_originals", "make_mutant", "probe", "classify", "run_fuzz", "main"]

CLASSES = ("refused-clean", "loaded-identical", "valid-different", "SILENT", "TRACEBACK", "CRASH", "HANG")
FAILURES = ("SILENT", "TRACEBACK", "CRASH", "HANG")
REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--epochs", "1", "--batch-size", "32", "--quiet", "--set", "model.kwargs={widths: [8, 16, 16]}",
         "--set", "run.tensorboard=false", "--set", "model.activation=hardtanh"]
QUANT = "quant={default: {weight: {bits: 1.4}, act: {bits: 1.4}}}"
LIMIT = ["--limit", "32"]


# ----------------------------------------------------------------------------- originals

def _write_idx(path: Path, array) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as fh:
        fh.write(header + array.astype("uint8").tobytes())


def fabricate_dataset(folder: Path, n_train: int = 128, n_test: int = 64) -> Path:
    """A learnable 28x28 10-class Fashion-MNIST-like IDX dataset: class c brightens a c-dependent block."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 4)
            images[i, 2 + 7 * r: 9 + 7 * r, 2 + 6 * q: 9 + 6 * q] += 180
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", np.clip(images, 0, 255))
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return folder


def _cli(argv: list[str]) -> tuple[int, str, str, BaseException | None]:
    """``hbnn.cli.main(argv)`` in-process: ``(exit code, stdout, stderr, escaped exception)``."""
    from hbnn.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    exc = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(argv)
        except SystemExit as stop:
            rc = stop.code if isinstance(stop.code, int) else 1
        except BaseException as error:  # noqa: BLE001 - what escapes main is a traceback
            rc, exc = 1, error
    return rc, out.getvalue(), err.getvalue(), exc


def _must(argv: list[str]) -> None:
    rc, _, err, exc = _cli(argv)
    if rc != 0:
        raise RuntimeError(f"building originals: hbnn {' '.join(argv)} failed ({rc}): {err.strip() or exc!r}")


def split_safetensors(data: bytes) -> tuple[dict, str, dict, bytes]:
    """``(outer header, metadata key, inner JSON header, tensor bytes)`` of an hbnn safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    outer = json.loads(data[8:8 + n])
    (key,) = outer["__metadata__"]
    return outer, key, json.loads(outer["__metadata__"][key]), data[8 + n:]


def join_safetensors(outer: dict, key: str, inner: dict, rest: bytes) -> bytes:
    """Inverse of :func:`split_safetensors` (the header padded with spaces to 8 bytes, as writers do)."""
    outer = dict(outer, __metadata__={key: json.dumps(inner, sort_keys=True)})
    text = json.dumps(outer, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + rest


def _sidecar(meta: dict, data: bytes, old: dict | None = None) -> bytes:
    """A ``last.json`` for tensor-file bytes ``data``: ``old`` updated with ``meta``, new sha256."""
    from hbnn.io import seal_header

    side = dict(old or {}, **meta)
    side["sha256"] = hashlib.sha256(data).hexdigest()
    return (json.dumps(seal_header(side), indent=2, sort_keys=True) + "\n").encode()


def _normalise_run(run: Path) -> None:
    """Drop ``best.*`` (so every tool reads ``last``); zero the checkpoint's wall time (resealed): byte-stable originals."""
    from hbnn.io import seal_header

    for p in run.glob("best.*"):
        p.unlink()
    st = run / "last.safetensors"
    outer, key, inner, rest = split_safetensors(st.read_bytes())
    inner["wall_time_s"] = 0.0
    data = join_safetensors(outer, key, seal_header(inner), rest)
    st.write_bytes(data)
    old = json.loads((run / "last.json").read_text())
    (run / "last.json").write_bytes(_sidecar(json.loads(split_safetensors(data)[0]["__metadata__"][key]), data, old))


def _chain_model():
    """A calibrated chain of every layer kind the packed format holds (input 1 x 28 x 28, 10 classes)."""
    import torch
    from torch import nn

    from hbnn.nn import HBConv2d, HBLinear

    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        HBConv2d(4, 8, 3, padding=1, bias=True, weight_quant=1.4, act_quant=1.4, output_scale=True),
        nn.BatchNorm2d(8), nn.Hardtanh(), nn.MaxPool2d(2), nn.BatchNorm2d(8),
        HBConv2d(8, 8, 3, stride=2, padding=1, weight_quant={"bits": 2, "per_channel": True}, act_quant=1),
        nn.Hardtanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.1),
        HBLinear(72, 16, weight_quant=1, act_quant=2), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    gen = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28, generator=gen))
    return model.eval()


def build_originals(work: Path) -> dict:
    """Build the originals under ``work``; ``{name: {"kind", "path", ...}}`` (also saved as originals.json)."""
    from hbnn.export import export_model

    data = fabricate_dataset(work / "data")
    base = ["train", "--data-dir", str(data), *TRAIN]
    _must([*base, "--out", str(work / "run_a"), "--seed", "1", "--set", QUANT])
    _normalise_run(work / "run_a")
    shutil.copytree(work / "run_a", work / "run_a_step1")
    _must(["train", "--resume", str(work / "run_a"), "--epochs", "2", "--quiet"])
    _must([*base, "--out", str(work / "run_b"), "--seed", "2", "--set", QUANT])
    _must([*base, "--out", str(work / "run_fp"), "--seed", "1"])
    for run in ("run_a", "run_b", "run_fp"):
        _normalise_run(work / run)
    _must(["export", str(work / "run_a"), "--which", "last", "--out", str(work / "fc4.hbnn"), "--json"])
    export_model(_chain_model(), work / "chain.hbnn", fold_bn=False, input_shape=[1, 28, 28],
                 meta={"data": {"name": "fashion_mnist", "data_dir": str(data), "image_size": None}})
    originals = {
        "fc4.hbnn": {"kind": "packed", "path": str(work / "fc4.hbnn"), "cli": ["infer", "hw"]},
        "chain.hbnn": {"kind": "packed", "path": str(work / "chain.hbnn"), "cli": ["infer"]},
        "run_a": {"kind": "checkpoint", "path": str(work / "run_a"), "cli": ["summary", "eval"],
                  "older": str(work / "run_a_step1"), "other": str(work / "run_b"), "float": str(work / "run_fp")},
    }
    (work / "originals.json").write_text(json.dumps(originals, indent=2))
    return originals


# ----------------------------------------------------------------------------- mutation operators

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


def _fmt(path) -> str:
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
    "bool_for_int": (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda r, v: bool(v) if r.random() < .5 else not v),
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
                return header, _fmt(path), edit, False
            continue
        if edit == "extra_key":
            target = value if isinstance(value, dict) else parent if isinstance(parent, dict) else None
            if target is None:
                continue
            target["zz_extra2" if "zz_extra" in target else "zz_extra"] = rng.choice([1, "x", None, [1, 2]])
            return header, _fmt(path), edit, False
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
        return header, _fmt(path), edit, edit in ("in_range", "zero") or (edit == "negative" and value < 0)
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
            sidecar = rng.choice(["stale", "both", "none"])
            case["edit"] = f"{info['edit']}+sidecar_{sidecar}"
            if sidecar == "both":
                (dest / "last.json").write_bytes(_sidecar(header, new, json.loads((dest / "last.json").read_text())))
            elif sidecar == "none":
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


# ----------------------------------------------------------------------------- probes

def _digest(obj, h=None) -> str:
    """SHA-256 over nested tensors / JSON data (NaN-safe: tensors by bytes, floats by repr)."""
    import torch

    top = h is None
    h = h or hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _digest(obj[k], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _digest(v, h)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    return h.hexdigest() if top else ""


def _error(exc: BaseException) -> dict:
    from hbnn.errors import HbnnError

    text = str(exc).strip()
    return {"status": "refused" if isinstance(exc, HbnnError) and "\n" not in text and text else "error",
            "type": type(exc).__name__, "message": text[:300]}


#: metadata a resume or an evaluation uses (cosmetic fields and digests are not state)
_STATE_KEYS = ("model", "config", "epoch", "batch_in_epoch", "step", "best_metric", "best_epoch", "world_size",
               "ranks", "metrics", "optimizer", "scheduler")


def _probe_packed(path: str, shape) -> dict:
    import torch

    from hbnn.export import load

    try:
        engine = load(path)
    except Exception as exc:  # noqa: BLE001 - classified
        return _error(exc)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            return {"status": "loaded", "digest": _digest(engine(x))}
    except Exception as exc:  # noqa: BLE001 - loaded, but it is another model
        return {"status": "loaded", "digest": "forward failed", "type": type(exc).__name__, "message": str(exc)[:200]}


def _probe_checkpoint(run: str, original: dict) -> dict:
    from hbnn.train.checkpoint import load_checkpoint, restore_checkpoint
    from hbnn.train.config import config_from_dict
    from hbnn.train.loop import build_optimizer, build_scheduler
    from hbnn.train.rebuild import build_model_for, recorded_shape

    cfg = config_from_dict(original["config"])
    model, _ = build_model_for(cfg.model, recorded_shape(original["model"]), cfg.quant)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.sched, cfg.train.epochs, 4)
    try:
        ckpt = load_checkpoint(run)
        restore_checkpoint(ckpt, model, optimizer, scheduler)
    except Exception as exc:  # noqa: BLE001 - classified
        return _error(exc)
    meta = {k: ckpt.metadata.get(k, "<missing>") for k in _STATE_KEYS}
    return {"status": "loaded", "digest": _digest([model.state_dict(), optimizer.state_dict(),
                                                   scheduler.state_dict(), meta])}


def _cli_argv(probe_name: str, path: str) -> list[str]:
    return {"infer": ["infer", path, "--json", "--batch-size", "32", *LIMIT],
            "hw": ["hw", "estimate", "--packed", path, "--json"],
            "summary": ["summary", path, "--json"],
            "eval": ["eval", path, "--which", "last", "--json", "--batch-size", "32", *LIMIT]}[probe_name]


def _probe_cli(probe_name: str, path: str) -> dict:
    rc, out, err, exc = _cli(_cli_argv(probe_name, path))
    if exc is not None:
        return {"status": "error", "type": type(exc).__name__, "message": f"escaped hbnn.cli.main: {exc}"[:300], "rc": 1}
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if rc == 2 and len(lines) == 1:
        return {"status": "refused", "type": "exit 2", "message": lines[0][:300], "rc": rc}
    if rc != 0:
        return {"status": "error", "type": f"exit {rc}", "message": " | ".join(lines[-3:])[:300], "rc": rc}
    try:  # the mutant's own path and checksums are not part of the result
        result = json.loads(out.replace(path, "<PATH>"))
        if isinstance(result, dict):
            for key in ("checkpoint", "sha256", "file", "packed"):
                result.pop(key, None)
        digest = _digest(result)
    except ValueError:
        digest = hashlib.sha256(out.replace(path, "<PATH>").encode()).hexdigest()
    return {"status": "loaded", "digest": digest, "rc": rc}


def probe(case: dict, originals: dict, cli: bool | None = None) -> dict:
    """Run the probes of one case; ``cli`` None = the default policy (see the module docstring)."""
    orig = originals[case["original"]]
    path = case["path"]
    results = {"load": _probe_packed(path, orig["input_shape"]) if case["kind"] == "packed"
               else _probe_checkpoint(path, orig["meta"])}
    if cli is None:
        cli = (case["op"] == "edit_resealed" or results["load"]["status"] != "refused"
               or random.Random(f"cli/{case['i']}").random() < 0.1)
    if cli:
        for name in orig["cli"]:
            results[name] = _probe_cli(name, path)
    return results


def classify(case: dict, results: dict, refs: dict) -> tuple[str, str | None]:
    """``(class, the probe that decided it)``: the worst over the case's probes."""
    worst, which = -1, None
    for name, res in results.items():
        if res["status"] == "refused":
            cls = "refused-clean"
        elif res["status"] == "error":
            cls = "TRACEBACK"
        elif res["digest"] == refs[case["original"]][name]["digest"]:
            cls = "loaded-identical"
        else:
            cls = "valid-different" if case["in_range"] else "SILENT"
        if CLASSES.index(cls) > worst:
            worst, which = CLASSES.index(cls), name
    return CLASSES[worst], which


# ----------------------------------------------------------------------------- workers

def _load_originals(work: Path) -> dict:
    from hbnn.export import read_packed
    from hbnn.train.checkpoint import load_checkpoint

    originals = json.loads((work / "originals.json").read_text())
    for orig in originals.values():
        if orig["kind"] == "packed":
            orig["input_shape"] = read_packed(orig["path"])[0]["input_shape"]
        else:
            orig["meta"] = load_checkpoint(orig["path"]).metadata
    return originals


def _quiet_process() -> None:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)


def worker(work: Path, seed: int, kinds: list[str]) -> None:
    """Serve cases: read ``i`` per line on stdin, answer one JSON line (library output goes to stderr)."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _quiet_process()
    originals = _load_originals(work)
    scratch = Path(tempfile.mkdtemp(prefix="mutant-", dir=work))
    for line in sys.stdin:
        i = int(line)
        case = make_mutant(originals, kinds, seed, i, scratch / "m")
        t0 = time.monotonic()
        case["results"] = probe(case, originals)
        case["seconds"] = round(time.monotonic() - t0, 3)
        channel.write(json.dumps(case, default=str) + "\n")
        channel.flush()


class _Pool:
    """Worker subprocesses with a per-case deadline; a dead or late worker is replaced."""

    def __init__(self, jobs: int, argv: list[str], timeout: float) -> None:
        self.argv, self.timeout, self.sel = argv, timeout, selectors.DefaultSelector()
        self.slots: list[dict] = [self._spawn() for _ in range(jobs)]

    def _spawn(self) -> dict:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
        slot = {"proc": proc, "case": None, "since": 0.0, "started": time.monotonic()}
        self.sel.register(proc.stdout, selectors.EVENT_READ, slot)
        return slot

    def _replace(self, slot: dict) -> None:
        self.sel.unregister(slot["proc"].stdout)
        with contextlib.suppress(ProcessLookupError):
            slot["proc"].kill()
        slot["proc"].wait()
        self.slots[self.slots.index(slot)] = self._spawn()

    def run(self, indices: list[int]):
        """Yield ``(i, case or None, failure class or None)`` as cases finish."""
        todo = list(reversed(indices))
        while todo or any(s["case"] is not None for s in self.slots):
            for slot in self.slots:
                if slot["case"] is None and todo:
                    slot["case"], slot["since"] = todo.pop(), time.monotonic()
                    slot["proc"].stdin.write(f"{slot['case']}\n")
                    slot["proc"].stdin.flush()
            for key, _ in self.sel.select(timeout=0.5):
                slot = key.data
                line = slot["proc"].stdout.readline()
                i, slot["case"] = slot["case"], None
                if line:
                    yield i, json.loads(line), None
                else:
                    self._replace(slot)
                    yield i, None, "CRASH"
            now = time.monotonic()
            for slot in list(self.slots):  # startup (imports) gets extra time once
                extra = 60 if slot["since"] - slot["started"] < 1 else 0
                if slot["case"] is not None and now - slot["since"] > self.timeout + extra:
                    i = slot["case"]
                    self._replace(slot)
                    yield i, None, "HANG"

    def close(self) -> None:
        for slot in self.slots:
            slot["proc"].stdin.close()
            slot["proc"].wait(timeout=30)


# ----------------------------------------------------------------------------- driver

def _example(case: dict, which: str | None) -> dict:
    res = case.get("results", {}).get(which, {}) if which else {}
    return {"i": case["i"], "kind": case["kind"], "original": case["original"], "op": case["op"],
            "field": case.get("field"), "edit": case.get("edit"), "probe": which,
            "exception": res.get("type"), "message": res.get("message")}


def summarise(cases: list[dict], seed: int, n: int, kinds: list[str], elapsed: float) -> dict:
    counts, by_op, by_kind = Counter(), defaultdict(Counter), defaultdict(Counter)
    examples: dict[str, list] = defaultdict(list)
    seen = set()
    accepted_invalid, groups = Counter(), defaultdict(Counter)
    for case in sorted(cases, key=lambda c: c["i"]):
        cls = case["class"]
        counts[cls] += 1
        by_op[case["op"]][cls] += 1
        by_kind[case["kind"]][cls] += 1
        if cls == "loaded-identical" and case["op"] == "edit_resealed" and not str(case.get("edit")).startswith(
                ("in_range", "extra_key", "missing_key")):
            accepted_invalid[f"{case['kind']} {str(case.get('edit')).split('+')[0]} at {case.get('field')}"] += 1
        if cls in (*FAILURES, "valid-different"):
            ex = _example(case, case.get("decided_by"))
            where = ".".join(str(ex["field"]).split("[")[0].split(".")[:2])
            groups[cls][f"{ex['kind']} {ex['op']} {where} via {ex['probe']}: {ex['exception'] or 'loaded'}"] += 1
            key = (cls, ex["kind"], ex["op"], ex["probe"], ex["exception"], where)
            if key not in seen and sum(e["kind"] == ex["kind"] for e in examples[cls]) < 5:
                seen.add(key)
                examples[cls].append(ex)
    return {"seed": seed, "n": n, "kinds": kinds, "elapsed_s": round(elapsed, 1),
            "counts": {c: counts.get(c, 0) for c in CLASSES},
            "by_operator": {op: dict(c) for op, c in sorted(by_op.items())},
            "by_kind": {k: dict(c) for k, c in sorted(by_kind.items())},
            "accepted_invalid": sum(accepted_invalid.values()),
            "accepted_invalid_top": dict(accepted_invalid.most_common(10)),
            "failure_groups": {c: dict(g.most_common(25)) for c, g in groups.items()},
            "examples": dict(examples)}


_SCRATCH = ("data", "run_a", "run_a_step1", "run_b", "run_fp", "fc4.hbnn", "chain.hbnn", "originals.json")


def run_fuzz(n: int, seed: int = 0, kinds=("packed", "checkpoint"), jobs: int = 2, timeout: float = 60.0,
             work: Path | None = None, progress: bool = False) -> dict:
    """Build the originals, fuzz ``n`` mutants, return the summary (see the module docstring)."""
    kinds = list(kinds)
    t0 = time.monotonic()
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="hbnn-fuzz-")) if owned else Path(work)
    if not owned and work.exists():  # a reused scratch folder: drop what an earlier run left
        if any(p.name not in _SCRATCH and not p.name.startswith("mutant-") for p in work.iterdir()):
            raise SystemExit(f"--work {work} holds files this script did not write; give an empty folder")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        _quiet_process()
        originals = build_originals(work)
        full = _load_originals(work)
        refs = {}
        for name, orig in full.items():
            case = {"i": -1, "original": name, "kind": orig["kind"], "path": orig["path"], "op": "none"}
            refs[name] = probe(case, full, cli=True)
            bad = {k: v for k, v in refs[name].items() if v["status"] != "loaded" or v["digest"] == "forward failed"}
            if bad:
                return {"error": f"original {name} fails its own probes: {bad}", "exit": 3}
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", str(work), "--seed", str(seed),
                "--kinds", ",".join(kinds)]
        pool, cases = _Pool(max(1, min(jobs, n)), argv, timeout), []
        for done, (i, case, failure) in enumerate(pool.run(list(range(n))), start=1):
            if case is None:
                case = {"i": i, "class": failure, "decided_by": None, **_describe(originals, kinds, seed, i)}
            else:
                case["class"], case["decided_by"] = classify(case, case["results"], refs)
            cases.append(case)
            if progress and done % 100 == 0:
                print(f"{done}/{n} {dict(Counter(c['class'] for c in cases))}", file=sys.stderr, flush=True)
        pool.close()
        summary = summarise(cases, seed, n, kinds, time.monotonic() - t0)
        summary["exit"] = 1 if any(summary["counts"][c] for c in FAILURES) else 0
        return summary
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def _describe(originals: dict, kinds: list[str], seed: int, i: int) -> dict:
    """The description of case ``i`` (rebuilt in a scratch folder) when its worker died."""
    with tempfile.TemporaryDirectory() as tmp:
        case = make_mutant(originals, kinds, seed, i, Path(tmp) / "m")
    return {k: case[k] for k in ("kind", "original", "op", "field", "edit", "in_range")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, nargs="?", default=200, help="number of mutants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="packed,checkpoint", help="comma list: packed, checkpoint")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as HANG")
    ap.add_argument("--out", help="also write the JSON summary here")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - {"packed", "checkpoint"} or not kinds:
        ap.error(f"--kinds: {args.kinds!r}; allowed: packed, checkpoint")
    if args.worker:
        worker(Path(args.worker), args.seed, kinds)
        return 0
    summary = run_fuzz(args.n, args.seed, kinds, args.jobs, args.timeout, args.work, progress=True)
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return summary["exit"]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
