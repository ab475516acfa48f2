"""The training and evaluation loops, optimizer and schedule, as small functions.

Nothing here knows about files, configs on disk or processes; :mod:`hbnn.train.run`
wires these into a run, and tests call them directly.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F

from hbnn.train.config import OptimConfig, SchedConfig
from hbnn.train.step import TrainStep

__all__ = [
    "EpochStats",
    "build_optimizer",
    "build_scheduler",
    "train_one_epoch",
    "evaluate",
    "topk_correct",
    "current_lr",
    "restore_stats",
]


class EpochStats:
    """Running sums of one training epoch, kept on the device (no per-step host sync).

    ``loss_sum`` is the sum of per-sample losses, ``correct`` the top-1 hits, ``count`` the
    samples seen. Sums are float64 so a resumed epoch continues exactly.
    """

    def __init__(self, device: torch.device | str = "cpu", loss_sum: float = 0.0,
                 correct: int = 0, count: int = 0) -> None:
        self.loss_sum = torch.tensor(float(loss_sum), dtype=torch.float64, device=device)
        self.correct = torch.tensor(int(correct), dtype=torch.int64, device=device)
        self.count = int(count)

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: ``loss`` is the batch-mean loss."""
        n = labels.shape[0]
        self.loss_sum += loss.detach().double() * n
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.count += n

    def as_dict(self) -> dict:
        """JSON-safe sums (for checkpoints)."""
        return {"loss_sum": float(self.loss_sum.item()), "correct": int(self.correct.item()),
                "count": self.count}

    @property
    def loss(self) -> float:
        """Mean loss so far (nan before the first batch)."""
        return float(self.loss_sum.item()) / self.count if self.count else float("nan")

    @property
    def top1(self) -> float:
        """Top-1 accuracy so far, in [0, 1]."""
        return float(self.correct.item()) / self.count if self.count else float("nan")


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg`` (sgd, adam, adamw) over ``params``.

    Example:
        >>> opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimConfig())
        >>> type(opt).__name__, opt.defaults["lr"]
        ('SGD', 0.01)
    """
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name: unknown optimizer {cfg.name!r}; choose one of sgd, adam, adamw")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedConfig, epochs: int,
                    steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule named by ``cfg``, in units of its ``interval``.

    With ``t`` the epoch (``interval: epoch``) or ``step / steps_per_epoch`` (``interval: step``):
    ``step``: ``lr = lr0 * gamma ** floor(t / step_size)``; ``cosine``:
    ``lr = min_lr + (lr0 - min_lr) * (1 + cos(pi * t / epochs)) / 2``; ``constant``.
    """
    sched = torch.optim.lr_scheduler
    unit = steps_per_epoch if cfg.interval == "step" else 1
    if cfg.name == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size * unit, gamma=cfg.gamma)
    if cfg.name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs * unit), eta_min=cfg.min_lr)
    if cfg.name == "constant":
        return sched.StepLR(optimizer, step_size=1, gamma=1.0)
    raise ValueError(f"sched.name: unknown schedule {cfg.name!r}; choose one of step, cosine, constant")


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """Learning rate of the first parameter group."""
    return float(optimizer.param_groups[0]["lr"])


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at #classes)."""
    ks = list(ks)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, : min(k, kmax)].any(1).sum() for k in ks]


def train_one_epoch(model: torch.nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, *,
                    device: torch.device | str, stats: EpochStats | None = None,
                    start_batch: int = 0, step: int = 0, label_smoothing: float = 0.0,
                    on_step: Callable[[int, int, EpochStats], None] | None = None,
                    progress: Any = None, scheduler: Any = None,
                    train_step: Callable | None = None) -> tuple[EpochStats, int]:
    """Run one epoch of SGD steps on cross-entropy.

    Args:
        model: the network (put into train mode here).
        batches: iterable of ``(images, labels)``, already positioned at ``start_batch``.
        optimizer: the optimizer stepped once per batch.
        device: where the batches go.
        stats: running sums to continue (a resumed epoch), or None for a fresh epoch.
        start_batch: index of the first batch ``batches`` yields within the epoch.
        step: optimizer steps done before this call.
        label_smoothing: cross-entropy label smoothing.
        on_step: called as ``on_step(step, next_batch, stats)`` after each step (checkpoints, logs).
        progress: a :class:`hbnn.progress.Progress` (``update(n, postfix=fn)``) or None.
        scheduler: an LR scheduler stepped after every optimizer step (per-step schedules), or None.
        train_step: ``train_step(model, optimizer, images, labels, step) -> (loss, logits)``
            doing one optimizer step (:class:`hbnn.train.step.TrainStep`: autocast, clipping,
            warmup, distillation, EMA); None = plain cross-entropy with ``label_smoothing``.

    Returns:
        ``(stats, step)`` after the epoch.
    """
    stats = stats if stats is not None else EpochStats(device)
    train_step = train_step or TrainStep(label_smoothing=label_smoothing)
    model.train()
    batch = start_batch
    t0, seen = time.perf_counter(), 0
    for images, labels in batches:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loss, logits = train_step(model, optimizer, images, labels, step)
        if scheduler is not None:
            scheduler.step()
        stats.update(loss, logits, labels)
        step += 1
        batch += 1
        seen += labels.shape[0]
        if progress is not None:  # the postfix syncs the device: computed only when shown
            progress.update(1, postfix=lambda: {
                "loss": f"{stats.loss:.4f}", "acc": f"{stats.top1:.4f}",
                "img_s": f"{seen / max(time.perf_counter() - t0, 1e-9):.0f}"})
        if on_step is not None:
            on_step(step, batch, stats)
    return stats, step


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, *, device: torch.device | str,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             limit: int | None = None, progress: Any = None) -> dict:
    """Test loss and top-1/top-5 accuracy.

    Args:
        model: the network (eval mode inside, its previous mode restored).
        batches: iterable of ``(images, labels)``.
        device: where the batches go.
        reduce: sums a tensor over processes (DDP all-reduce), or None.
        limit: stop after this many batches.
        progress: a :class:`hbnn.progress.Progress` updated once per batch, or None.

    Returns:
        ``{"loss", "top1", "top5", "count"}``; accuracies in [0, 1].
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    for i, (images, labels) in enumerate(batches):
        if limit is not None and i >= limit:
            break
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        top1, top5 = topk_correct(logits, labels, (1, 5))
        sums += torch.stack([loss.double(), top1.double(), top5.double(),
                             torch.tensor(labels.shape[0], dtype=torch.float64, device=device)])
        if progress is not None:
            progress.update(1)
    if reduce is not None:
        sums = reduce(sums)
    model.train(was_training)
    loss, top1, top5, count = sums.tolist()
    if count == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "count": 0}
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "count": int(count)}


def restore_stats(sums: Mapping[str, Any] | None, device: torch.device | str) -> EpochStats:
    """An :class:`EpochStats` from its :meth:`EpochStats.as_dict` form (None = fresh)."""
    return EpochStats(device, **(sums or {}))
