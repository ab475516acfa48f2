"""torchrun / DDP plumbing: detect the environment, init the process group, collectives.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them a run is a
single process and every helper here is a no-op. The process group uses NCCL on CUDA and
gloo on CPU, with a finite timeout (``dist.timeout_s``) so that a peer that hangs or dies
turns into an error instead of a stuck job; torchrun itself tears the remaining workers
down as soon as one exits non-zero.

Failure contract: every collective of this module (:func:`barrier`,
:func:`all_reduce_sum`, :func:`all_gather_objects`, :func:`run_on_main`) runs inside
:func:`guard_collective`, and so does the whole of :func:`hbnn.train.run.fit` (DDP's
gradient all-reduce). Gloo honours the process-group timeout in every collective
(measured: all-reduce, barrier, object gather and broadcast each fail after
``dist.timeout_s`` with a frozen peer, at once with a dead one; destroying the group
afterwards returns at once), so a peer that is killed, hangs or is stopped (SIGSTOP)
becomes one :class:`~hbnn.errors.DistError` line on the surviving ranks::

    hbnn: error: rank 0: rank 1 did not answer within dist.timeout_s=10 s during all_gather_objects; the job stops

Only errors of the process group are converted (:func:`is_collective_failure`); any
other ``RuntimeError`` (a bug) keeps its traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import signal
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from hbnn.errors import ConfigError, DistError
from hbnn.train.config import DistConfig

__all__ = [
    "DistContext",
    "detect_dist_env",
    "resolve_device",
    "setup_distributed",
    "teardown_distributed",
    "all_reduce_sum",
    "all_gather_objects",
    "run_on_main",
    "barrier",
    "is_collective_failure",
    "guard_collective",
]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 = the process that logs and writes checkpoints).
        world_size: number of processes.
        local_rank: rank on this node (picks the GPU).
        device: the device this process trains on.
        timeout_s: the collective timeout (``dist.timeout_s``), quoted in :class:`DistError`.
        local_peers: process ids of the other ranks on this host (see :func:`guard_collective`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout_s: float = 300.0
    local_peers: tuple[int, ...] = ()

    @property
    def enabled(self) -> bool:
        """True when running with a process group (world size > 1)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def _env_int(env: dict, name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def detect_dist_env(env: dict | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment variables (default 0, 1, 0)."""
    env = dict(os.environ if env is None else env)
    rank, world, local = _env_int(env, "RANK", 0), _env_int(env, "WORLD_SIZE", 1), _env_int(env, "LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torchrun environment RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """The device for ``train.device`` (auto, cpu, cuda) on this process.

    Raises:
        ConfigError: ``cuda`` requested but not available.
    """
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but CUDA is not available; use auto or cpu")
    index = local_rank % max(1, torch.cuda.device_count())
    return torch.device("cuda", index)


def setup_distributed(cfg: DistConfig, device_preference: str = "auto") -> DistContext:
    """Initialise the process group when launched by torchrun with more than one process.

    Args:
        cfg: backend and collective timeout.
        device_preference: ``train.device``.

    Returns:
        The :class:`DistContext` of this process.
    """
    rank, world, local = detect_dist_env()
    device = resolve_device(device_preference, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = cfg.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise ConfigError("dist.backend: 'nccl' needs CUDA devices; use gloo (or auto) on CPU")
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=cfg.timeout_s))
    ctx = DistContext(rank, world, local, device, cfg.timeout_s)
    if ctx.enabled:
        ctx = dataclasses.replace(ctx, local_peers=_local_peers(ctx))
    return ctx


def _local_peers(ctx: DistContext) -> tuple[int, ...]:
    """Process ids of the other ranks on this host (one object gather at start-up)."""
    me = (socket.gethostname(), os.getpid())
    everyone = all_gather_objects(ctx, me)
    return tuple(pid for rank, (host, pid) in enumerate(everyone) if host == me[0] and rank != ctx.rank)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if this module's caller created one.

    Unreachable objects that still hold the group (a DDP wrapper's reducer sits in
    reference cycles) are collected first, so the group's threads are joined here rather
    than during interpreter shutdown.
    """
    if ctx.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


#: Substrings of the process group's own error messages (gloo, NCCL, the TCP store).
_FAILURE_MARKS = ("gloo", "nccl", "timed out", "connection closed", "connection reset", "broken pipe")
_CLOSED_MARKS = ("connection closed", "connection reset", "broken pipe", "end of file")


def is_collective_failure(exc: BaseException) -> bool:
    """True for an error raised by the process group (a dead, hung or stopped peer).

    ``torch.distributed.DistError`` (NCCL, store) or a ``RuntimeError`` whose message
    comes from gloo/NCCL or names a timeout or a closed connection; any other
    ``RuntimeError`` (a shape mismatch, a bug) is not one.
    """
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(mark in text for mark in _FAILURE_MARKS)


def _timed_out(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def _failure(ctx: DistContext, what: str, exc: BaseException) -> DistError:
    peer = f"rank {1 - ctx.rank}" if ctx.world_size == 2 else "a peer rank"
    text = str(exc).strip()
    low = text.lower()
    if _timed_out(exc):
        why = f"{peer} did not answer within dist.timeout_s={ctx.timeout_s:g} s"
    elif any(mark in low for mark in _CLOSED_MARKS):
        why = f"{peer} closed its connection (the process died or was killed)"
    else:
        why = f"the process group failed ({(text.splitlines() or [type(exc).__name__])[0][:200]})"
    return DistError(f"rank {ctx.rank}: {why} during {what}; the job stops")


def _end_stopped_peers(ctx: DistContext) -> None:
    """SIGKILL this host's peer ranks that are stopped (SIGSTOP), under torchrun only.

    torchrun answers a failed worker with SIGTERM to the others, which a stopped process
    does not act on, and sends SIGKILL only 30 s later (``--shutdown-timeout`` is not
    used on that path in torch 2.x). A peer is ended here only if it is a sibling
    worker (same parent, the torchrun agent) in state ``T`` of ``/proc/PID/stat`` (not
    ``t``, a debugger's stop); torchrun would kill it anyway. This process then ignores
    SIGTERM: torchrun sends it one as soon as it sees the killed peer, and this process
    is on its way out anyway, with its one-line report still to print.
    """
    if not os.environ.get("TORCHELASTIC_RUN_ID"):
        return
    for pid in ctx.local_peers:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[0] == "T" and fields[1] == str(os.getppid()):
            with contextlib.suppress(ValueError):  # only the main thread may set handlers
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def guard_collective(ctx: DistContext, what: str) -> Iterator[None]:
    """Turn a process-group failure inside the block into one :class:`DistError` line.

    Args:
        ctx: this process's place in the job (a single process: the block runs unguarded).
        what: the collective (or phase) named in the message, e.g. ``"barrier"``.

    After a timeout under torchrun, a stopped sibling worker is ended first
    (:func:`_end_stopped_peers`), so the job ends within ``dist.timeout_s`` plus
    torchrun's monitor interval rather than 30 s later.

    Raises:
        DistError: ``rank R: rank P did not answer within dist.timeout_s=T s during WHAT; the job
            stops`` (or ``closed its connection`` for a dead peer). Errors that are not
            process-group failures (:func:`is_collective_failure`) pass unchanged.
    """
    try:
        yield
    except RuntimeError as exc:
        if not ctx.enabled or not is_collective_failure(exc):
            raise
        if _timed_out(exc):
            _end_stopped_peers(ctx)
        raise _failure(ctx, what, exc) from None


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process); a missing peer raises :class:`DistError`."""
    if ctx.enabled:
        with guard_collective(ctx, "barrier"):
            dist.barrier()


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (returns it unchanged for a single process)."""
    if ctx.enabled:
        tensor = tensor.clone()
        with guard_collective(ctx, "all_reduce_sum"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(ctx: DistContext, obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
    with guard_collective(ctx, "all_gather_objects"):
        dist.all_gather_object(out, obj)
    return out


def run_on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and share its result; a user error there is raised on every rank.

    This keeps ranks in step when rank 0 refuses something (e.g. an existing run
    directory): instead of rank 0 exiting while the others wait in a collective, all
    ranks raise the same error.
    """
    if not ctx.enabled:
        return fn()
    payload: list = [None]
    if ctx.is_main:
        try:
            payload[0] = ("ok", fn())
        except (ValueError, TypeError, OSError) as exc:
            payload[0] = ("error", type(exc), str(exc))
    with guard_collective(ctx, "run_on_main broadcast"):
        dist.broadcast_object_list(payload, src=0)
    if payload[0][0] == "error":
        _, cls, message = payload[0]
        raise cls(message)
    return payload[0][1]
