"""Checkpoints: tensors in safetensors, metadata as JSON, both halves sealed and bound together.

A checkpoint named ``NAME`` in a run directory is two files:

``NAME.safetensors``
    Tensors: ``model/<state_dict key>``, ``optim/<param index>/<state key>``,
    ``sched/<key>`` and, with ``train.ema``, ``ema/<state_dict key>`` (the EMA shadow of
    every ``model/`` tensor, same shape and dtype; present exactly when the config sets
    ``train.ema``). Its header metadata holds the full metadata (key ``"hbnn"``, JSON),
    sealed by :mod:`hbnn.io`: ``payload_sha256`` over every tensor and ``header_sha256``
    over every other field, so the file is self-verifying.
``NAME.json``
    The same metadata, human-readable, plus ``sha256`` (of the ``.safetensors`` file it
    describes) and ``file`` (that file's name), sealed with its own ``header_sha256``.

Metadata schema (``schema_version`` 2): ``format`` ("hbnn-checkpoint"),
``schema_version``, ``run_id`` (32 hex digits, the identity of the run that wrote it,
from ``RUN_DIR/run.json``; :mod:`hbnn.train.rundir`), ``epoch`` (the epoch to continue
in, 0-based), ``batch_in_epoch`` (next batch of that epoch), ``step`` (optimizer steps
done), ``hbnn_version``, ``torch_version``, ``model`` (name, config, quant and the
dataset shape it was built for), ``config`` (the resolved run config),
``steps_per_epoch``, ``best_metric``, ``best_epoch``, ``world_size``, ``ranks`` (one
entry per rank: ``rng`` -- python, numpy, torch CPU and CUDA generator states -- and
``epoch_sums``), ``optimizer`` (param groups and non-tensor state), ``scheduler``
(non-tensor state), ``metrics`` (the last evaluation), ``wall_time_s``; with the
training extensions: ``grad_scaler`` (``train.amp: fp16``), ``teacher_sha256``
(``train.teacher``: the teacher checkpoint a resume must find unchanged) and
``user_data`` (true: trained on a user dataset, ``fit(train_data=...)``).

Every field is checked on load (:func:`validate_metadata`) and before a save: bools are
not integers; ``step``, ``epoch``, ``batch_in_epoch`` are integers >= 0 with
``batch_in_epoch <= step`` and ``step >= epoch + batch_in_epoch`` (every epoch takes at
least one step), ``batch_in_epoch < steps_per_epoch``; ``best_metric`` (a top-1 accuracy) is in
``[0, 1]`` and ``wall_time_s`` finite; ``config`` passes the one config schema
(:func:`hbnn.train.config.config_from_dict`; its errors are reported as
``config.<key>``) and is in its resolved form (every key, each value of its field's
type); ``model`` has exactly its keys and agrees with ``config`` (name, model and quant
sections, the dataset's shape); every rank's RNG states have the structure
:func:`capture_rng_state` writes; ``metrics`` is ``{}`` or the last evaluation
(accuracies in ``[0, 1]``). Observed losses (``metrics.loss``,
``epoch_sums.loss_sum``) may be NaN or infinite: a diverged run stays loadable. Every
``optim/`` tensor needs its ``optimizer.state`` entry.

:func:`restore_checkpoint` also compares the saved optimizer and scheduler state with
the live objects' own ``state_dict()`` before restoring (groups, keys, value kinds,
finite non-negative numbers, parameter indices, state keys of the optimizer type and
tensor shapes, the schedule's position against ``epoch``/``step``), since ``torch``
restores any values silently.

Write protocol: the tensor file is written first, the JSON second, each atomically
(temp + fsync + rename, :mod:`hbnn.io`): a failed write leaves the previous checkpoint as
it was. A process killed between the two renames leaves the new ``NAME.safetensors``
beside no ``NAME.json`` (first save) or the previous save's ``NAME.json``. So on load the
sealed ``.safetensors`` is authoritative and the JSON half must be one of:

- absent;
- the same checkpoint: same ``run_id`` and position, ``sha256`` of this very file, the
  same metadata;
- an older checkpoint of the same run: same ``run_id``, an earlier
  ``(step, epoch, batch_in_epoch)`` -- the interrupted save; ignored.

Anything else (another run's JSON, a later step, a mismatched sha256, an unsealed or
edited JSON, a JSON without its ``.safetensors``) is an error. :func:`load_checkpoint`
with ``run_id`` also refuses a checkpoint written by another run.

Loading raises :class:`hbnn.errors.CheckpointError` (one line naming the file) for a
missing, truncated, corrupt, edited, foreign or other-schema file, halves that do not
belong together, or tensors that do not match the model, optimizer or scheduler they are
restored into. Nothing is loaded silently.
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
from hbnn.io import (
    HEADER_DIGEST,
    atomic_write_bytes,
    atomic_write_json,
    header_sha256,
    read_verified_safetensors,
    seal_header,
    tensors_sha256,
)
from hbnn.train._ckpt_fields import FORMAT, RUN_ID_PATTERN, SCHEMA_VERSION, position, validate_metadata
from hbnn.train._ckpt_states import check_optimizer_state, check_scheduler_state, check_state_tensors

__all__ = [
    "SCHEMA_VERSION",
    "FORMAT",
    "RUN_ID_PATTERN",
    "Checkpoint",
    "checkpoint_paths",
    "save_checkpoint",
    "load_checkpoint",
    "validate_metadata",
    "restore_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]

_META_KEY = "hbnn"
#: Fields the JSON half adds to the metadata (besides its own seal).
_SIDECAR_FIELDS = ("sha256", "file")


@dataclasses.dataclass
class Checkpoint:
    """A verified checkpoint in memory.

    Attributes:
        path: the ``.safetensors`` file it came from.
        metadata: the metadata dict (see the module docstring).
        model_state: model ``state_dict`` (CPU tensors).
        optimizer_state: optimizer ``state_dict`` or None if none was saved.
        scheduler_state: scheduler ``state_dict`` or None if none was saved.
        ema_state: the EMA shadow (``train.ema``), keyed like ``model_state``, or None.
    """

    path: Path
    metadata: dict
    model_state: dict
    optimizer_state: dict | None
    scheduler_state: dict | None
    ema_state: dict | None = None


def checkpoint_paths(path: str | os.PathLike, name: str = "last") -> tuple[Path, Path]:
    """The ``(.safetensors, .json)`` pair for a run directory, a stem or either file.

    Raises:
        CheckpointError: ``path`` is an existing file that is neither half of a checkpoint
            (e.g. a packed ``.hbnn`` model).
    """
    path = Path(path)
    if path.is_dir():
        path = path / name
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    elif path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: expected a run directory, NAME.safetensors or "
                              "NAME.json (a packed model file is run by hbnn infer)")
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


def restore_rng_state(state: Mapping[str, Any], where: str | os.PathLike | None = None) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only if CUDA is in use).

    ``where`` (the checkpoint file) is named in the error message.
    """
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
        source = f"checkpoint {where}: " if where is not None else "checkpoint "
        raise CheckpointError(f"{source}RNG state is invalid ({type(exc).__name__})") from None


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


def _tensor_dict(model_state: Mapping[str, torch.Tensor], optimizer: Any, scheduler: Any,
                 ema_state: Mapping[str, torch.Tensor] | None = None) -> tuple[dict, dict | None, dict | None]:
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model_state.items()}
    tensors.update({f"ema/{k}": v for k, v in (ema_state or {}).items()})
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
                    metadata: Mapping[str, Any], optimizer: Any = None, scheduler: Any = None,
                    ema_state: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Atomically write a checkpoint (``.safetensors`` then ``.json``; see the module docstring).

    Args:
        path: the checkpoint stem (``run/last``) or either of its files.
        model_state: the model's ``state_dict()`` (unwrap DDP first).
        metadata: JSON-safe metadata, at least ``run_id``, ``step``, ``epoch`` and
            ``batch_in_epoch`` (see the module docstring); ``format``, ``schema_version``
            and the digests are added here.
        optimizer: optimizer whose ``state_dict()`` is saved, or None.
        scheduler: LR scheduler whose ``state_dict()`` is saved, or None.
        ema_state: the EMA shadow (:meth:`hbnn.train.ema.EmaWeights.state_dict`), or None.

    Returns:
        The metadata as written to the JSON file.

    Raises:
        CheckpointError: ``metadata`` fails :func:`validate_metadata` (nothing is written).
        OSError: the write failed; the previous checkpoint files are unchanged.
    """
    from safetensors.torch import save as st_save

    tensor_path, meta_path = checkpoint_paths(path)
    tensors, opt_meta, sched_meta = _tensor_dict(model_state, optimizer, scheduler, ema_state)
    _check_ema_tensors(metadata, tensors, tensor_path)
    meta = {k: v for k, v in metadata.items() if k not in (*_SIDECAR_FIELDS, HEADER_DIGEST)}
    meta.update(format=FORMAT, schema_version=SCHEMA_VERSION, optimizer=opt_meta,
                scheduler=sched_meta, payload_sha256=tensors_sha256(tensors))
    meta = json.loads(json.dumps(meta))  # JSON-safe now, as it will be read back
    validate_metadata(meta, tensor_path)
    meta = seal_header(meta)
    data = st_save(tensors, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(tensor_path, data)
    side = seal_header({**meta, "sha256": hashlib.sha256(data).hexdigest(), "file": tensor_path.name})
    atomic_write_json(meta_path, side)
    return side


# ----------------------------------------------------------------------------- loading

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


def _canonical(meta: Mapping[str, Any]) -> str:
    """The metadata without the JSON half's own fields, as canonical JSON (NaN-safe comparison)."""
    body = {k: v for k, v in meta.items() if k not in (*_SIDECAR_FIELDS, HEADER_DIGEST)}
    return json.dumps(body, sort_keys=True)


def _read_sidecar(meta_path: Path) -> dict:
    """The sealed, valid JSON half (raises CheckpointError naming it otherwise)."""
    try:
        side = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CheckpointError(f"checkpoint metadata {meta_path} is unreadable or corrupt") from None
    if not isinstance(side, dict) or not isinstance(side.get(HEADER_DIGEST), str):
        raise CheckpointError(f"checkpoint metadata {meta_path} is not sealed (no {HEADER_DIGEST}): written by "
                              "an older hbnn or edited")
    if side[HEADER_DIGEST] != header_sha256(side):
        raise CheckpointError(f"checkpoint metadata {meta_path} is corrupt or was edited (header digest mismatch)")
    validate_metadata(side, meta_path)
    for key in _SIDECAR_FIELDS:
        if not isinstance(side.get(key), str):
            raise CheckpointError(f"checkpoint metadata {meta_path}: field {key} is missing or not a string")
    return side


def _check_sidecar(meta_path: Path, meta: dict, sha: str, where: Path) -> None:
    """The JSON half must be absent, describe this file, or be an older save of the same run."""
    if not meta_path.exists():
        return  # killed between the two renames of a run's first save
    side = _read_sidecar(meta_path)
    if side["file"] != where.name:
        raise CheckpointError(f"checkpoint metadata {meta_path} describes {side['file']}, not {where.name}")
    if side["run_id"] != meta["run_id"]:
        raise CheckpointError(f"checkpoint halves do not belong together: {meta_path.name} is from run "
                              f"{side['run_id']}, {where} from run {meta['run_id']}")
    if position(side) == position(meta):
        if side["sha256"] != sha or _canonical(side) != _canonical(meta):
            raise CheckpointError(f"checkpoint {where} does not match the sha256 and metadata in "
                                  f"{meta_path.name} (corrupt or replaced)")
    elif position(side) > position(meta):
        raise CheckpointError(f"checkpoint halves do not belong together: {meta_path.name} describes step "
                              f"{side['step']}, {where} holds the older step {meta['step']}")
    # else: an older save of the same run -- a save interrupted between its two renames;
    # the sealed tensor file is authoritative.


def load_checkpoint(path: str | os.PathLike, name: str = "last", *, run_id: str | None = None) -> Checkpoint:
    """Read and verify a checkpoint: seals, every metadata field, both halves, readable tensors.

    Args:
        path: a run directory (then ``name`` picks ``last`` or ``best``), a stem or
            either file of the pair.
        name: checkpoint name inside a run directory.
        run_id: the run the checkpoint must belong to (``RUN_DIR/run.json``), or None
            for a loose checkpoint file.

    Returns:
        The :class:`Checkpoint`, tensors on CPU; ``metadata["sha256"]`` is the file's digest.

    Raises:
        CheckpointError: missing, truncated, corrupt, edited, invalid or other-schema
            checkpoint, halves that do not belong together, or another run's checkpoint.
    """
    tensor_path, meta_path = checkpoint_paths(path, name)
    if not tensor_path.exists():
        given = Path(path)
        if meta_path.exists():
            raise CheckpointError(f"checkpoint not found: {tensor_path} ({meta_path.name} exists without it)")
        if given.suffix not in ("", ".safetensors", ".json") and not given.is_dir():
            raise CheckpointError(f"checkpoint not found: {given} (expected a run directory, NAME.safetensors "
                                  "or NAME.json)")
    data, meta, tensors = read_verified_safetensors(tensor_path, key=_META_KEY, what="checkpoint",
                                                    error=CheckpointError, check=validate_metadata)
    if run_id is not None and meta["run_id"] != run_id:
        raise CheckpointError(f"checkpoint {tensor_path} belongs to another run (run_id {meta['run_id']}, "
                              f"this run is {run_id}); it cannot be used here")
    sha = hashlib.sha256(data).hexdigest()
    _check_sidecar(meta_path, meta, sha, tensor_path)
    meta["sha256"] = sha
    try:
        return _unpack(tensor_path, meta, tensors)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"checkpoint {tensor_path} has optimizer or scheduler state that does not fit "
                              "its tensors") from None


def _check_ema_tensors(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], where: Path) -> None:
    """``ema/`` tensors exactly when the config sets ``train.ema``: one per ``model/`` tensor, same shape and dtype."""
    ema = {k[len("ema/"):]: v for k, v in tensors.items() if k.startswith("ema/")}
    config = meta.get("config")
    wanted = isinstance(config, Mapping) and (config.get("train") or {}).get("ema") is not None
    if not wanted:
        if ema:
            raise CheckpointError(f"checkpoint {where} holds EMA weights (ema/{next(iter(ema))}) but its config "
                                  "has no train.ema")
        return
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    if sorted(ema) != sorted(model):
        key = sorted(set(ema) ^ set(model))[0]
        raise CheckpointError(f"checkpoint {where}: the EMA weights (train.ema) do not match the model "
                              f"weights (tensor {key!r} in one but not the other)")
    for key, t in model.items():
        if ema[key].shape != t.shape or ema[key].dtype != t.dtype:
            raise CheckpointError(f"checkpoint {where}: EMA weight {key} is {ema[key].dtype} "
                                  f"{tuple(ema[key].shape)}; the model weight is {t.dtype} {tuple(t.shape)}")


def _unpack(tensor_path: Path, meta: dict, tensors: Mapping[str, torch.Tensor]) -> Checkpoint:
    unknown = [k for k in tensors if k.split("/", 1)[0] not in ("model", "optim", "sched", "ema")]
    if unknown:
        raise CheckpointError(f"checkpoint {tensor_path} holds an unexpected tensor {unknown[0]!r}")
    _check_ema_tensors(meta, tensors, tensor_path)
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    ema_state = {k[len("ema/"):]: v for k, v in tensors.items() if k.startswith("ema/")} or None
    opt = meta.get("optimizer")
    optimizer_state = None
    if opt is not None:
        check_state_tensors(opt, tensors, tensor_path)
        state = _join_state("optim", opt["state"], tensors)
        optimizer_state = {"state": {int(k): v for k, v in state.items()},
                           "param_groups": opt["param_groups"]}
    sched = meta.get("scheduler")
    scheduler_state = None if sched is None else _join_state("sched", sched, tensors)
    return Checkpoint(tensor_path, meta, model_state, optimizer_state, scheduler_state, ema_state)


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
                       scheduler: Any = None, *, ema: Any = None, grad_scaler: Any = None) -> None:
    """Load a verified checkpoint into a model (and optionally optimizer, scheduler, EMA, GradScaler).

    Which weights the model gets: a checkpoint with EMA weights (``train.ema``) loaded for
    inference (no ``optimizer`` and no ``ema``: ``hbnn eval``, ``summary``, ``export``,
    :func:`hbnn.train.rebuild.model_from_checkpoint`) gives the model its EMA weights; a
    training resume gives it the raw weights and ``ema`` (an
    :class:`hbnn.train.ema.EmaWeights`) the shadow. ``grad_scaler`` gets the saved
    ``grad_scaler`` state (``train.amp: fp16``).

    The saved optimizer and scheduler state is first compared with the live objects' own
    ``state_dict()`` (groups, keys, value kinds and ranges, parameter indices, state
    tensor shapes, the schedule's position; :mod:`hbnn.train._ckpt_states`): ``torch``
    would restore any values silently.

    Raises:
        CheckpointError: key or shape mismatch, a missing optimizer/scheduler state, or
            saved state that does not fit the live optimizer/scheduler (one line naming
            the file and the field).
    """
    _check_model_state(model, ckpt.model_state, ckpt.path)
    scaler_state = ckpt.metadata.get("grad_scaler")
    for obj, state, what in ((optimizer, ckpt.optimizer_state, "optimizer"),
                             (scheduler, ckpt.scheduler_state, "scheduler"), (ema, ckpt.ema_state, "EMA"),
                             (grad_scaler, scaler_state, "grad_scaler")):
        if obj is not None and state is None:
            raise CheckpointError(f"checkpoint {ckpt.path} has no {what} state to resume from")
    if optimizer is not None:
        check_optimizer_state(ckpt.optimizer_state, optimizer, ckpt.path)
    if scheduler is not None:
        groups = ckpt.optimizer_state["param_groups"] if optimizer is not None else None
        check_scheduler_state(ckpt.scheduler_state, scheduler, ckpt.metadata, ckpt.path, groups)
    inference = optimizer is None and ema is None and ckpt.ema_state is not None
    model.load_state_dict(ckpt.ema_state if inference else ckpt.model_state)
    if ema is not None:
        ema.load_state_dict(ckpt.ema_state, f"checkpoint {ckpt.path}")
    for obj, state, what in ((optimizer, ckpt.optimizer_state, "optimizer"),
                             (scheduler, ckpt.scheduler_state, "scheduler"),
                             (grad_scaler, scaler_state, "grad_scaler")):
        if obj is None:
            continue
        try:
            obj.load_state_dict(state)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"checkpoint {ckpt.path} is incompatible with the {what}: {msg}") from None
