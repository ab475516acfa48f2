"""torchrun / DDP plumbing: detect the environment, init the process group, collectives.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them a run is a
single process and every helper here is a no-op. The process group uses NCCL on CUDA and
gloo on CPU, with a finite timeout (``dist.timeout_s``) so that a peer that hangs or dies
turns into an error instead of a stuck job; torchrun itself tears the remaining workers
down as soon as one exits non-zero.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from hbnn.errors import ConfigError
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
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

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
    return DistContext(rank, world, local, device)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if this module's caller created one.

    Unreachable objects that still hold the group (a DDP wrapper's reducer sits in
    reference cycles) are collected first, so the group's threads are joined here rather
    than during interpreter shutdown.
    """
    if ctx.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (returns it unchanged for a single process)."""
    if ctx.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(ctx: DistContext, obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
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
    dist.broadcast_object_list(payload, src=0)
    if payload[0][0] == "error":
        _, cls, message = payload[0]
        raise cls(message)
    return payload[0][1]
