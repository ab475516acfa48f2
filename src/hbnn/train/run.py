"""One training run: build everything from a :class:`Config`, train, evaluate, checkpoint.

:func:`fit` is what ``hbnn train`` calls; it is an ordinary function (no module state),
so sweeps and tests call it too. Run directory layout (:mod:`hbnn.train.rundir` checks,
creates or clears it)::

    RUN_DIR/run.json           the run identity (run_id, bound into every checkpoint)
    RUN_DIR/config.yaml        the resolved config
    RUN_DIR/metrics.csv        one row per epoch (see hbnn.train.logs.METRIC_FIELDS)
    RUN_DIR/tb/                TensorBoard events
    RUN_DIR/last.{safetensors,json}, RUN_DIR/best.{safetensors,json}   checkpoints

Exactness: the data order and augmentation of batch ``k`` of epoch ``e`` are a pure
function of ``(seed, e, rank, k)`` (``hbnn.data.build_loader``); a checkpoint stores the
position ``(epoch, batch_in_epoch, step)``, the optimizer and scheduler state, every RNG
state and the epoch's running sums, so a resumed CPU run reproduces the uninterrupted
run bit for bit. A run killed before its first checkpoint restarts from step 0 with its
saved config, which is the same thing; at an epoch end ``best`` is written before
``last``, so a kill between the two resumes from the older ``last`` and rewrites ``best``.
Which state a killed run is in, and what ``--resume`` does with it: :mod:`hbnn.train.rundir`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

import hbnn
from hbnn.errors import CheckpointError, ConfigError
from hbnn.train.checkpoint import capture_rng_state, restore_checkpoint, restore_rng_state, save_checkpoint
from hbnn.train.config import Config, config_to_dict, save_config
from hbnn.train.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    guard_collective,
    run_on_main,
    setup_distributed,
    teardown_distributed,
)
from hbnn.progress import make_progress, progress_settings
from hbnn.train.logs import MetricsLog, format_epoch_line, open_tensorboard
from hbnn.train.loop import (
    EpochStats,
    build_optimizer,
    build_scheduler,
    current_lr,
    evaluate,
    restore_stats,
    train_one_epoch,
)
from hbnn.train.ema import EmaWeights
from hbnn.train.rebuild import build_model_for, dataset_shape
from hbnn.train.rundir import has_checkpoint, load_run_checkpoint, prepare_run_dir
from hbnn.train.step import TrainStep, check_amp
from hbnn.train.userdata import UserLoader, check_user_data, is_user_loader, user_shape

__all__ = [
    "set_determinism",
    "restore_determinism",
    "seed_everything",
    "build_datasets",
    "realized_bits",
    "fit",
]

def set_determinism(deterministic: bool) -> tuple[bool, bool, bool]:
    """Ask torch for deterministic kernels (warn-only where an op has none).

    Returns:
        The previous ``(enabled, warn_only, cudnn.benchmark)``, for :func:`restore_determinism`.
    """
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return previous


def restore_determinism(previous: tuple[bool, bool, bool]) -> None:
    """Undo :func:`set_determinism` (so callers in the same process are not affected)."""
    enabled, warn_only, benchmark = previous
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_datasets(cfg: Config) -> tuple[Any, Any]:
    """``(train, test)`` datasets of ``cfg.data``."""
    from hbnn.data import build_dataset

    d = cfg.data
    train = build_dataset(d.name, "train", d.data_dir, d.image_size, limit=d.train_limit)
    test = build_dataset(d.name, "test", d.data_dir, d.image_size, limit=d.test_limit)
    return train, test


def realized_bits(model: torch.nn.Module) -> dict:
    """``{"weight_bits", "act_bits"}``: realized model averages from ``hbnn.convert.summarize``.

    Float models report 32 for both.
    """
    from hbnn.convert import summarize

    totals = summarize(model)["model"]
    return {"weight_bits": float(totals["avg_weight_bits"]), "act_bits": float(totals["avg_act_bits"])}


class _Trainer:
    """The mutable state of one :func:`fit` call (kept off module level)."""

    def __init__(self, cfg: Config, ctx: DistContext, run_dir: Path, quiet: bool) -> None:
        self.cfg, self.ctx, self.run_dir, self.quiet = cfg, ctx, run_dir, quiet
        self.epoch = self.batch = self.step = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.wall_offset = 0.0
        self.t_start = time.perf_counter()
        self.last_metrics: dict = {}
        self.stats: EpochStats | None = None
        self.rank_state: dict = {}
        self.run_id = ""
        self.steps_per_epoch = 1
        self.train_step: TrainStep | None = None
        self.ema: EmaWeights | None = None
        self.extra_meta: dict = {}  # teacher_sha256, user_data (hbnn.train.checkpoint)
        self.show_progress = cfg.run.progress and ctx.is_main and not quiet
        if self.show_progress:
            progress_settings()  # a bad HBNN_PROGRESS_EVERY_* fails before anything is written

    def say(self, text: str) -> None:
        if self.ctx.is_main and not self.quiet:
            print(text, flush=True)

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.t_start

    def save(self, name: str, model: torch.nn.Module, optimizer: Any, scheduler: Any,
             stats: EpochStats | None, shape: dict) -> None:
        """Collective: every rank contributes its RNG state and sums; rank 0 writes."""
        local = {"rng": capture_rng_state(), "epoch_sums": stats.as_dict() if stats else None}
        ranks = all_gather_objects(self.ctx, local)
        if not self.ctx.is_main:
            return
        cfg = config_to_dict(self.cfg)
        meta = {
            "hbnn_version": hbnn.__version__, "torch_version": torch.__version__,
            "model": {"name": self.cfg.model.name, "config": cfg["model"], "quant": cfg["quant"], **shape},
            "run_id": self.run_id, "config": cfg, "epoch": self.epoch, "batch_in_epoch": self.batch,
            "step": self.step, "steps_per_epoch": self.steps_per_epoch,
            "best_metric": self.best_metric, "best_epoch": self.best_epoch, "world_size": self.ctx.world_size,
            "ranks": ranks, "metrics": self.last_metrics, "wall_time_s": self.wall(), **self.extra_meta,
        }
        scaler = self.train_step.scaler if self.train_step is not None else None
        if scaler is not None:
            meta["grad_scaler"] = scaler.state_dict()
        save_checkpoint(self.run_dir / name, model_state=model.state_dict(), metadata=meta,
                        ema_state=self.ema.state_dict() if self.ema is not None else None,
                        optimizer=optimizer, scheduler=scheduler)

    def resume_from(self, meta: Mapping[str, Any], where: Path) -> None:
        self.epoch, self.batch, self.step = meta["epoch"], meta["batch_in_epoch"], meta["step"]
        saved_world = int(meta.get("world_size") or 1)
        if self.batch and saved_world != self.ctx.world_size:
            raise CheckpointError(f"{where} was written mid-epoch by {saved_world} process(es); resume it "
                                  f"with the same number (not {self.ctx.world_size}) or from an epoch-end checkpoint")
        saved_steps = meta.get("steps_per_epoch", self.steps_per_epoch)
        if self.batch and saved_steps != self.steps_per_epoch:
            raise CheckpointError(f"{where} was written mid-epoch with {saved_steps} steps per epoch; this run has "
                                  f"{self.steps_per_epoch} (different data?); it cannot continue exactly")
        self.best_metric, self.best_epoch = meta.get("best_metric"), meta.get("best_epoch")
        self.wall_offset = float(meta.get("wall_time_s") or 0.0)
        self.last_metrics = dict(meta.get("metrics") or {})
        ranks = meta.get("ranks") or []
        mine = ranks[self.ctx.rank] if len(ranks) == self.ctx.world_size else (ranks[0] if ranks else {})
        if "rng" not in mine:
            raise CheckpointError(f"checkpoint {where} has no RNG state to resume from")
        self.rank_state = mine
        self.stats = restore_stats(mine.get("epoch_sums"), self.ctx.device)


def _batches_per_epoch(train_ds: Any, cfg: Config, ctx: DistContext) -> int:
    """Optimizer steps per epoch (the unit of per-step LR schedules)."""
    n = len(_train_loader(train_ds, cfg, ctx, 0, 0))
    return n if cfg.train.limit_train_batches is None else min(n, cfg.train.limit_train_batches)


def _train_loader(train_ds: Any, cfg: Config, ctx: DistContext, epoch: int, start_batch: int):
    if not hasattr(train_ds, "fetch"):  # user data (hbnn.train.userdata)
        if is_user_loader(train_ds):
            return train_ds
        return UserLoader(train_ds, batch_size=cfg.train.batch_size // ctx.world_size, train=True,
                          seed=cfg.train.seed, epoch=epoch, start_batch=start_batch, rank=ctx.rank,
                          world_size=ctx.world_size)
    from hbnn.data import build_loader

    return build_loader(train_ds, batch_size=cfg.train.batch_size // ctx.world_size, train=True,
                        seed=cfg.train.seed, epoch=epoch, start_batch=start_batch, rank=ctx.rank,
                        world_size=ctx.world_size, augment=cfg.data.augment, num_workers=cfg.data.num_workers)


def _test_loader(test_ds: Any, cfg: Config, ctx: DistContext):
    from hbnn.data import build_loader

    size = cfg.train.eval_batch_size or cfg.train.batch_size
    if not hasattr(test_ds, "fetch"):  # user data (hbnn.train.userdata)
        if is_user_loader(test_ds):
            return test_ds
        return UserLoader(test_ds, batch_size=max(1, size // ctx.world_size), train=False, seed=cfg.train.seed,
                          epoch=0, rank=ctx.rank, world_size=ctx.world_size)
    return build_loader(test_ds, batch_size=max(1, size // ctx.world_size), train=False,
                        seed=cfg.train.seed, epoch=0, rank=ctx.rank, world_size=ctx.world_size,
                        augment=False, num_workers=cfg.data.num_workers)


def fit(cfg: Config, run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
        quiet: bool = False, train_data: Any = None, test_data: Any = None) -> dict:
    """Train ``cfg`` into ``run_dir`` (or continue the run there with ``resume``).

    Works as a single process or under torchrun (one process per device, DDP).

    Args:
        cfg: the resolved config (for ``resume``, the run's saved config plus overrides).
        run_dir: the run directory.
        resume: continue from ``run_dir/last``.
        overwrite: start over in an existing run directory.
        quiet: no progress bar and no per-epoch lines.
        train_data: a user ``Dataset`` of ``(image [C, H, W], int label)`` or a ``DataLoader``
            to train on instead of ``cfg.data`` (:mod:`hbnn.train.userdata`: order,
            determinism and resume rules); the model is built for its shape.
        test_data: the same for evaluation; required with ``train_data``.

    Returns:
        The last evaluation metrics plus ``epoch``, ``step``, ``best_metric`` and ``run_dir``.

    Raises:
        ConfigError, DatasetError, CheckpointError, FileExistsError, OSError: user-facing errors.
        DistError: a peer process died, hung or was stopped (``dist.timeout_s``).
    """
    ctx = setup_distributed(cfg.dist, cfg.train.device)
    previous = set_determinism(cfg.train.deterministic)
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        with guard_collective(ctx, "DDP training"):  # a dead or frozen peer: one DistError line
            result = _fit(cfg, Path(run_dir), ctx, resume=resume, overwrite=overwrite, quiet=quiet,
                          data=(train_data, test_data))
        # Leave together: rank 0 finishes later (it writes the checkpoints); a rank that
        # tears its gloo group down and exits while a peer is still working can abort at
        # exit (see hbnn.cli.exit_process, which avoids the exit-time teardown itself).
        barrier(ctx)
        return result
    finally:
        torch.set_num_threads(threads)
        restore_determinism(previous)
        teardown_distributed(ctx)


def _datasets(cfg: Config, data: tuple[Any, Any]) -> tuple[Any, Any, dict, bool]:
    """``(train, test, shape, user)``: the user's data (:mod:`hbnn.train.userdata`) or ``cfg.data``'s."""
    train_data, test_data = data
    if train_data is None and test_data is None:
        train_ds, test_ds = build_datasets(cfg)
        return train_ds, test_ds, dataset_shape(train_ds), False
    if train_data is None or test_data is None:
        raise ConfigError("fit: pass train_data and test_data together (test_data=train_data evaluates on the "
                          "training data)")
    check_user_data("train_data", train_data)
    check_user_data("test_data", test_data)
    shape = dataset_shape(train_data) if hasattr(train_data, "fetch") else user_shape(train_data)
    return train_data, test_data, shape, True


def _extensions(tr: "_Trainer", model: torch.nn.Module, shape: dict) -> tuple[TrainStep, Any]:
    """The :class:`TrainStep` of ``cfg.train``/``cfg.sched`` and the GradScaler (fp16) or None."""
    cfg, device = tr.cfg, tr.ctx.device
    t = cfg.train
    check_amp(t.amp, device)
    scaler = torch.amp.GradScaler(device.type) if t.amp == "fp16" else None
    teacher = None
    if t.teacher is not None:
        from hbnn.train.distill import load_teacher

        teacher, sha = load_teacher(t.teacher, shape)
        teacher.to(device)
        tr.extra_meta["teacher_sha256"] = sha
    tr.ema = EmaWeights(model, t.ema) if t.ema is not None else None
    step = TrainStep(label_smoothing=t.label_smoothing, amp=t.amp, device_type=device.type, scaler=scaler,
                     grad_clip=t.grad_clip, warmup_steps=cfg.sched.warmup_epochs * tr.steps_per_epoch,
                     warmup_start=cfg.sched.warmup_start_factor, teacher=teacher, kd_alpha=t.kd_alpha,
                     kd_temperature=t.kd_temperature, ema=tr.ema)
    return step, scaler


def _check_resumable(tr: "_Trainer", meta: Any, where: Path, train_ds: Any) -> None:
    """The resumed run's teacher and data kind must be the checkpoint's; no mid-epoch resume of a user DataLoader."""
    if meta.get("teacher_sha256") != tr.extra_meta.get("teacher_sha256"):
        raise CheckpointError(f"{where} was trained with another train.teacher checkpoint (sha256 differs); "
                              "the run cannot continue exactly")
    if bool(meta.get("user_data")) != bool(tr.extra_meta.get("user_data")):
        raise CheckpointError(f"{where} was trained on {'user' if meta.get('user_data') else 'its config'}'s "
                              f"data; resume it with the same data (fit train_data/test_data)")
    if meta["batch_in_epoch"] and is_user_loader(train_ds):
        raise CheckpointError(f"{where} was written mid-epoch; a user DataLoader cannot continue an epoch "
                              "exactly: resume from an epoch-end checkpoint or pass a Dataset")


def _fit(cfg: Config, run_dir: Path, ctx: DistContext, *, resume: bool, overwrite: bool, quiet: bool,
         data: tuple[Any, Any] = (None, None)) -> dict:
    if cfg.train.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is not divisible by the "
                          f"{ctx.world_size} processes")
    seed_everything(cfg.train.seed)
    # Verify before building anything: a resumed run continues from `last` if it has one
    # (it must be this run's), else it starts at step 0 like a new run.
    ckpt = load_run_checkpoint(run_dir, "last", cfg) if resume and has_checkpoint(run_dir) else None
    train_ds, test_ds, shape, user = _datasets(cfg, data)
    model, report = build_model_for(cfg.model, shape, cfg.quant)
    model.to(ctx.device)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    trainer = _Trainer(cfg, ctx, run_dir, quiet)
    trainer.steps_per_epoch = _batches_per_epoch(train_ds, cfg, ctx)
    scheduler = build_scheduler(optimizer, cfg.sched, cfg.train.epochs, trainer.steps_per_epoch)
    if user:
        trainer.extra_meta["user_data"] = True
    trainer.train_step, scaler = _extensions(trainer, model, shape)
    if ckpt is not None:
        _check_resumable(trainer, ckpt.metadata, ckpt.path, train_ds)
        restore_checkpoint(ckpt, model, optimizer, scheduler, ema=trainer.ema, grad_scaler=scaler)
        trainer.resume_from(ckpt.metadata, ckpt.path)
    _train_loader(train_ds, cfg, ctx, trainer.epoch, 0)  # bad batch size etc. fail before any write
    prepared = run_on_main(ctx, lambda: prepare_run_dir(run_dir, resume=resume, overwrite=overwrite))
    trainer.run_id = prepared.run_id
    if prepared.removed:
        trainer.say(f"hbnn: removed {len(prepared.removed)} stale temporary file(s) of an interrupted write from "
                    f"{run_dir}: {', '.join(prepared.removed)}")
    if ctx.is_main:
        save_config(cfg, run_dir / "config.yaml")
    if report is not None and report.unmatched_rules:
        trainer.say(f"hbnn: warning: quant rules matched no layer: {', '.join(report.unmatched_rules)}")
    ddp_model = model
    if ctx.enabled:
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # 1-channel first convs get grads whose size-1 dim has another (meaningless) stride.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        ddp_model = DistributedDataParallel(model, device_ids=ids)
    metrics = tb = None
    if ctx.is_main:
        metrics = MetricsLog(run_dir / "metrics.csv", keep_until_step=trainer.step if resume else None)
        if cfg.run.tensorboard:
            tb = open_tensorboard(run_dir / "tb", purge_step=trainer.step + 1 if resume else None, quiet=quiet)
    if ckpt is not None:
        restore_rng_state(trainer.rank_state["rng"], ckpt.path)
    elif ctx.enabled:  # same init everywhere (above); distinct dropout streams per rank from here
        torch.manual_seed(cfg.train.seed + 1_000_003 * ctx.rank)
    if trainer.epoch >= cfg.train.epochs:
        trainer.say(f"run {run_dir} already finished {trainer.epoch} of {cfg.train.epochs} epochs")
    try:
        for epoch in range(trainer.epoch, cfg.train.epochs):
            _run_epoch(trainer, epoch, ddp_model, model, optimizer, scheduler, train_ds, test_ds,
                       shape, metrics, tb)
    finally:
        if tb is not None:
            tb.close()
    return {**trainer.last_metrics, "epoch": trainer.epoch, "step": trainer.step,
            "best_metric": trainer.best_metric, "run_dir": str(run_dir)}


def _run_epoch(tr: _Trainer, epoch: int, ddp_model: torch.nn.Module, model: torch.nn.Module,
               optimizer: Any, scheduler: Any, train_ds: Any, test_ds: Any, shape: dict,
               metrics: MetricsLog | None, tb: Any) -> None:
    cfg, ctx = tr.cfg, tr.ctx
    start = tr.batch if epoch == tr.epoch else 0
    loader = _train_loader(train_ds, cfg, ctx, epoch, start)
    n_batches = len(loader) if cfg.train.limit_train_batches is None else min(len(loader), cfg.train.limit_train_batches)
    batches = itertools.islice(loader, max(0, n_batches - start))
    stats = tr.stats if (tr.stats is not None and start > 0) else EpochStats(ctx.device)
    tr.stats = None
    tr.epoch, tr.batch = epoch, start
    every = cfg.train.checkpoint_every_steps

    def on_step(step: int, batch: int, stats: EpochStats) -> None:
        tr.step, tr.batch = step, batch
        if tb is not None and step % cfg.train.log_every_steps == 0:
            tb.add_scalar("train/loss_running", stats.loss, step)
            tb.add_scalar("train/lr", current_lr(optimizer), step)
        if every and step % every == 0 and batch < n_batches:
            tr.save("last", model, optimizer, scheduler, stats, shape)

    t0 = time.perf_counter()
    with make_progress(n_batches, f"train epoch {epoch + 1}/{cfg.train.epochs}", enabled=tr.show_progress,
                       initial=start) as progress:
        stats, _ = train_one_epoch(ddp_model, batches, optimizer, device=ctx.device, stats=stats,
                                   start_batch=start, step=tr.step, label_smoothing=cfg.train.label_smoothing,
                                   on_step=on_step, progress=progress if progress.enabled else None,
                                   scheduler=scheduler if cfg.sched.interval == "step" else None,
                                   train_step=tr.train_step)
    seconds = time.perf_counter() - t0
    sums = all_reduce_sum(ctx, torch.stack([stats.loss_sum, stats.correct.double(),
                                            torch.tensor(float(stats.count), dtype=torch.float64, device=ctx.device)]))
    loss_sum, correct, count = sums.tolist()
    images = (n_batches - start) * cfg.train.batch_size
    row: dict[str, Any] = {"epoch": epoch + 1, "step": tr.step, "train_loss": loss_sum / max(count, 1),
                           "train_top1": correct / max(count, 1), "lr": current_lr(optimizer),
                           "images_per_s": images / seconds if seconds > 0 else None}
    last = epoch + 1 == cfg.train.epochs
    if (epoch + 1) % cfg.train.eval_every == 0 or last:
        test_loader = _test_loader(test_ds, cfg, ctx)
        n_test = len(test_loader) if cfg.train.limit_test_batches is None else min(
            len(test_loader), cfg.train.limit_test_batches)
        with make_progress(n_test, f"eval epoch {epoch + 1}/{cfg.train.epochs}", enabled=tr.show_progress,
                           final=False) as progress:  # the epoch line follows
            with tr.ema.applied() if tr.ema is not None else contextlib.nullcontext():  # train.ema: eval the EMA
                result = evaluate(model, test_loader, device=ctx.device, reduce=lambda t: all_reduce_sum(ctx, t),
                                  limit=cfg.train.limit_test_batches,
                                  progress=progress if progress.enabled else None)
        row.update(test_loss=result["loss"], test_top1=result["top1"], test_top5=result["top5"])
        tr.last_metrics = {"epoch": epoch + 1, **result}
    if cfg.sched.interval == "epoch":
        scheduler.step()
    is_best = "test_top1" in row and not math.isnan(row["test_top1"]) and (
        tr.best_metric is None or row["test_top1"] > tr.best_metric)
    if is_best:
        tr.best_metric, tr.best_epoch = row["test_top1"], epoch + 1
    tr.epoch, tr.batch = epoch + 1, 0
    if ctx.is_main:
        row.update(realized_bits(model))
    row["wall_time_s"] = tr.wall()
    if ctx.is_main:  # the row goes first: a resume from an older checkpoint drops it again
        metrics.append(row)
    if is_best:  # best before last: a kill between them resumes from the older last, rewriting best
        tr.save("best", model, optimizer, scheduler, None, shape)
    tr.save("last", model, optimizer, scheduler, None, shape)
    if ctx.is_main:
        if tb is not None:
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    tb.add_scalar(f"epoch/{key}", value, tr.step)
            tb.flush()
        tr.say(format_epoch_line(row, cfg.train.epochs))
        if sys.stdout.isatty():
            sys.stdout.flush()
