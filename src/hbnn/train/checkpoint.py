"""Checkpoints: tensors in safetensors, metadata as JSON, verified on load.

A checkpoint named ``NAME`` in a run directory is two files:

``NAME.safetensors``
    Tensors: ``model/<state_dict key>``, ``optim/<param index>/<state key>`` and
    ``sched/<key>``. Its header metadata holds the full metadata (key ``"hbnn"``, JSON),
    including ``payload_sha256`` over every tensor (name, dtype, shape, bytes;
    :func:`hbnn.io.tensors_sha256`), so the file is self-verifying.
``NAME.json``
    The same metadata, human-readable, plus ``sha256`` of the ``.safetensors`` file.

Metadata schema (``schema_version`` 1): ``format`` ("hbnn-checkpoint"),
``schema_version``, ``hbnn_version``, ``torch_version``, ``model`` (name, config and the
dataset shapes it was built for), ``config`` (the resolved run config), ``epoch``
(the epoch to continue in, 0-based), ``batch_in_epoch`` (next batch of that epoch),
``step`` (optimizer steps done), ``best_metric``, ``best_epoch``, ``epoch_sums``,
``rng`` (one entry per rank: python, numpy, torch CPU and CUDA generator states),
``optimizer`` (param groups and non-tensor state), ``scheduler`` (non-tensor state),
``metrics`` (the last evaluation).

The tensor file is written first, the JSON second, each atomically (temp + fsync +
rename, :mod:`hbnn.io`): a failed write leaves the previous checkpoint as it was. If the
process dies between the two renames, the self-verifying tensor file is authoritative
and the stale JSON (describing an older step) is ignored.

Loading raises :class:`hbnn.errors.CheckpointError` (one line) for a missing, truncated,
corrupt (checksum), foreign or newer-schema file, or one whose tensors do not match the
model, optimizer or scheduler it is restored into. Nothing is loaded silently.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from hbnn.errors import CheckpointError
from hbnn.io import atomic_write_bytes, atomic_write_json, read_verified_safetensors, seal_header, tensors_sha256

__all__ = [
    "SCHEMA_VERSION",
    "FORMAT",
    "Checkpoint",
    "checkpoint_paths",
    "save_checkpoint",
    "load_checkpoint",
    "restore_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]

SCHEMA_VERSION = 1
FORMAT = "hbnn-checkpoint"
_META_KEY = "hbnn"


@dataclasses.dataclass
class Checkpoint:
    """A verified checkpoint in memory.

    Attributes:
        path: the ``.safetensors`` file it came from.
        metadata: the metadata dict (see the module docstring).
        model_state: model ``state_dict`` (CPU tensors).
        optimizer_state: optimizer ``state_dict`` or None if none was saved.
        scheduler_state: scheduler ``state_dict`` or None if none was saved.
    """

    path: Path
    metadata: dict
    model_state: dict
    optimizer_state: dict | None
    scheduler_state: dict | None


def checkpoint_paths(path: str | os.PathLike, name: str = "last") -> tuple[Path, Path]:
    """The ``(.safetensors, .json)`` pair for a run directory, a stem or either file."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


# ----------------------------------------------------------------------------- RNG state

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict:
    """Every global RNG state (python, numpy, torch CPU, each CUDA device) as JSON-safe data."""
    version, internal, gauss = random.getstate()
    key, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [key, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only if CUDA is in use)."""
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        key, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((key, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(_unb64(state["torch"]))
        cuda = state.get("cuda") or []
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_unb64(s) for s in cuda[: torch.cuda.device_count()]])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint RNG state is invalid ({exc})") from None


# ----------------------------------------------------------------------------- saving

def _split_state(prefix: str, state: Mapping[str, Any], tensors: dict) -> dict:
    """Move tensors of a (nested) state dict into ``tensors``; return the JSON-safe rest."""
    rest = {}
    for key, value in state.items():
        name = f"{prefix}/{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, Mapping):
            rest[str(key)] = _split_state(name, value, tensors)
        else:
            rest[str(key)] = value
    return rest


def _tensor_dict(model_state: Mapping[str, torch.Tensor], optimizer: Any, scheduler: Any
                 ) -> tuple[dict, dict | None, dict | None]:
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model_state.items()}
    opt_meta = sched_meta = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        opt_meta = {"state": _split_state("optim", sd["state"], tensors),
                    "param_groups": sd["param_groups"]}
    if scheduler is not None:
        sched_meta = _split_state("sched", scheduler.state_dict(), tensors)
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out, opt_meta, sched_meta


def save_checkpoint(path: str | os.PathLike, *, model_state: Mapping[str, torch.Tensor],
                    metadata: Mapping[str, Any], optimizer: Any = None, scheduler: Any = None
                    ) -> dict:
    """Atomically write a checkpoint (``.safetensors`` then ``.json``).

    Args:
        path: the checkpoint stem (``run/last``) or either of its files.
        model_state: the model's ``state_dict()`` (unwrap DDP first).
        metadata: JSON-safe metadata (epoch, step, config, rng, ...); ``format``,
            ``schema_version`` and the checksums are added here.
        optimizer: optimizer whose ``state_dict()`` is saved, or None.
        scheduler: LR scheduler whose ``state_dict()`` is saved, or None.

    Returns:
        The metadata as written to the JSON file.

    Raises:
        OSError: the write failed; the previous checkpoint files are unchanged.
    """
    from safetensors.torch import save as st_save

    tensor_path, meta_path = checkpoint_paths(path)
    tensors, opt_meta, sched_meta = _tensor_dict(model_state, optimizer, scheduler)
    meta = dict(metadata)
    meta.update(format=FORMAT, schema_version=SCHEMA_VERSION, optimizer=opt_meta,
                scheduler=sched_meta, payload_sha256=tensors_sha256(tensors))
    meta = seal_header(meta)
    data = st_save(tensors, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(tensor_path, data)
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    meta["file"] = tensor_path.name
    atomic_write_json(meta_path, meta)
    return meta


# ----------------------------------------------------------------------------- loading

def _check_header(meta: dict, where: Path) -> None:
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not an hbnn checkpoint (format {meta.get('format')!r})")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(f"checkpoint {where} has schema version {version!r}; this hbnn "
                              f"reads version {SCHEMA_VERSION}")


def _join_state(prefix: str, rest: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict:
    """Inverse of :func:`_split_state`: put the tensors under ``prefix/`` back into ``rest``."""
    out = json.loads(json.dumps(rest))  # deep copy of JSON data
    for name, t in tensors.items():
        if not name.startswith(prefix + "/"):
            continue
        *path, leaf = name[len(prefix) + 1:].split("/")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = t
    return out


def _check_sidecar(meta_path: Path, meta: dict, sha: str, where: Path) -> None:
    if not meta_path.exists():
        return
    try:
        side = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CheckpointError(f"checkpoint metadata {meta_path} is unreadable or corrupt") from None
    # A sidecar for another step is left over from a save interrupted between its two
    # renames; the self-verifying tensor file is authoritative then.
    if side.get("step") == meta.get("step") and side.get("sha256") != sha:
        raise CheckpointError(f"checkpoint {where} does not match the sha256 in {meta_path.name} "
                              "(corrupt or replaced)")


def load_checkpoint(path: str | os.PathLike, name: str = "last") -> Checkpoint:
    """Read and verify a checkpoint (schema version, checksums, readable tensors).

    Args:
        path: a run directory (then ``name`` picks ``last`` or ``best``), a stem or
            either file of the pair.
        name: checkpoint name inside a run directory.

    Returns:
        The :class:`Checkpoint`, tensors on CPU.

    Raises:
        CheckpointError: missing, truncated, corrupt or incompatible checkpoint.
    """
    tensor_path, meta_path = checkpoint_paths(path, name)
    data, meta, tensors = read_verified_safetensors(tensor_path, key=_META_KEY, what="checkpoint",
                                                    error=CheckpointError, check=_check_header)
    sha = hashlib.sha256(data).hexdigest()
    _check_sidecar(meta_path, meta, sha, tensor_path)
    meta["sha256"] = sha
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    opt = meta.get("optimizer")
    optimizer_state = None
    if opt is not None:
        state = _join_state("optim", opt["state"], tensors)
        optimizer_state = {"state": {int(k): v for k, v in state.items()},
                           "param_groups": opt["param_groups"]}
    sched = meta.get("scheduler")
    scheduler_state = None if sched is None else _join_state("sched", sched, tensors)
    return Checkpoint(tensor_path, meta, model_state, optimizer_state, scheduler_state)


def _check_model_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        key = (missing or extra)[0]
        kind = "lacks" if missing else "has an unexpected"
        raise CheckpointError(f"checkpoint {where} is incompatible with the model: it {kind} "
                              f"tensor {key!r} ({len(missing)} missing, {len(extra)} unexpected)")
    for key, t in own.items():
        if tuple(state[key].shape) != tuple(t.shape):
            raise CheckpointError(f"checkpoint {where} is incompatible with the model: {key} has "
                                  f"shape {tuple(state[key].shape)}, model has {tuple(t.shape)}")


def restore_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, optimizer: Any = None,
                       scheduler: Any = None) -> None:
    """Load a verified checkpoint into a model (and optionally optimizer and scheduler).

    Raises:
        CheckpointError: key or shape mismatch, or a missing optimizer/scheduler state.
    """
    _check_model_state(model, ckpt.model_state, ckpt.path)
    model.load_state_dict(ckpt.model_state)
    for obj, state, what in ((optimizer, ckpt.optimizer_state, "optimizer"),
                             (scheduler, ckpt.scheduler_state, "scheduler")):
        if obj is None:
            continue
        if state is None:
            raise CheckpointError(f"checkpoint {ckpt.path} has no {what} state to resume from")
        try:
            obj.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"checkpoint {ckpt.path} is incompatible with the {what}: {msg}") from None

