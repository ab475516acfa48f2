"""Loops, optimizer and schedule as plain functions on tiny synthetic data."""

from __future__ import annotations

import math

import pytest
import torch

from hbnn.train.config import OptimConfig, SchedConfig
from hbnn.train.loop import (
    EpochStats,
    build_optimizer,
    build_scheduler,
    current_lr,
    evaluate,
    restore_stats,
    topk_correct,
    train_one_epoch,
)


def _batches(n=6, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(bs, 5, generator=g)
        out.append((x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()))
    return out


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimConfig(name=name, lr=0.1))
    assert isinstance(opt, cls) and current_lr(opt) == 0.1


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_step_schedule_divides_by_ten_every_30_epochs():
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimConfig())
    sched = build_scheduler(opt, SchedConfig(), epochs=90)
    lrs = []
    for _ in range(90):
        lrs.append(current_lr(opt))
        sched.step()
    assert lrs[0] == lrs[29] == 0.01
    assert lrs[30] == pytest.approx(0.001) and lrs[60] == pytest.approx(0.0001)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_cosine_and_constant_schedules():
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimConfig(lr=1.0))
    sched = build_scheduler(opt, SchedConfig(name="cosine", min_lr=0.0), epochs=4)
    lrs = []
    for _ in range(4):
        lrs.append(current_lr(opt))
        sched.step()
    assert lrs == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimConfig(lr=0.3))
    sched = build_scheduler(opt, SchedConfig(name="constant"), epochs=4)
    for _ in range(5):
        sched.step()
    assert current_lr(opt) == 0.3


def test_train_one_epoch_learns_and_counts_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = build_optimizer(model.parameters(), OptimConfig(lr=0.1))
    data = _batches()
    before = evaluate(model, data, device="cpu")
    calls = []
    step = 0
    for _ in range(5):
        stats, step = train_one_epoch(model, data, opt, device="cpu", step=step,
                                      on_step=lambda s, b, st: calls.append((s, b)))
    after = evaluate(model, data, device="cpu")
    assert step == 30 and calls[:2] == [(1, 1), (2, 2)] and calls[-1] == (30, 6)
    assert stats.count == 96 and 0 <= stats.top1 <= 1
    assert after["loss"] < before["loss"] and after["top1"] > before["top1"]
    assert after["count"] == 96 and after["top5"] == 1.0  # 4 classes: top-5 covers all


def test_resumed_epoch_stats_continue_exactly():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    opt = build_optimizer(model.parameters(), OptimConfig(lr=0.1))
    data = _batches()
    state = {}
    model_copy = torch.nn.Linear(5, 4)
    model_copy.load_state_dict(model.state_dict())
    full, _ = train_one_epoch(model, data, opt, device="cpu")

    opt2 = build_optimizer(model_copy.parameters(), OptimConfig(lr=0.1))

    def grab(step, batch, stats):
        if batch == 3:
            state["sums"] = stats.as_dict()

    train_one_epoch(model_copy, data[:3], opt2, device="cpu", on_step=grab)
    resumed, _ = train_one_epoch(model_copy, data[3:], opt2, device="cpu", start_batch=3,
                                 stats=restore_stats(state["sums"], "cpu"))
    assert resumed.as_dict() == full.as_dict()
    assert isinstance(EpochStats().loss, float) and math.isnan(EpochStats().loss)


def test_topk_correct_caps_k_at_the_number_of_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 1])
    top1, top2, top5 = topk_correct(logits, labels, (1, 2, 5))
    assert (int(top1), int(top2), int(top5)) == (1, 2, 3)


def test_evaluate_limit_and_reduce_and_mode_restored():
    model = torch.nn.Linear(5, 4)
    model.train()
    seen = []
    res = evaluate(model, _batches(), device="cpu", limit=2, reduce=lambda t: (seen.append(t), t * 2)[1])
    assert res["count"] == 64 and len(seen) == 1 and model.training
    assert evaluate(model, [], device="cpu")["count"] == 0


def test_per_step_cosine_schedule_follows_the_epoch_curve():
    from hbnn.train.config import SchedConfig
    from hbnn.train.loop import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, SchedConfig(name="cosine", interval="step"), epochs=2, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    expected = [0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(1, 11)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="interval"):
        SchedConfig(interval="batch")
