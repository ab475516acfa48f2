"""Optimizer and scheduler state of a checkpoint, checked against what it is restored into.

Private to :mod:`hbnn.train.checkpoint`. ``torch``'s ``load_state_dict`` takes any values
it is given, so a resealed edit of the saved state (a dict for a learning rate, another
parameter index, an extra state key, an infinite ``last_epoch``) would be restored
silently. Before restoring, the saved state is compared with the live object's own
``state_dict()``:

- optimizer ``param_groups``: as many groups, the same keys per group (``initial_lr`` may
  be saved when the live optimizer has no scheduler yet), each value of the live value's
  JSON kind (bool, int, float, string, null, list of the same length), numbers finite
  and >= 0 (``momentum``, ``dampening`` <= 1; ``betas`` < 1), every value but the
  scheduled ``lr`` equal to the live one (the run's config, which a resume must keep),
  ``params`` equal to the live index lists;
- optimizer ``state``: entries only for those parameter indices, only the keys the
  optimizer type uses (SGD ``momentum_buffer``; Adam/AdamW ``step``, ``exp_avg``,
  ``exp_avg_sq``, ``max_exp_avg_sq``), floating tensors shaped like their parameter
  (``step``: a scalar);
- scheduler: the live keys, each value of the live value's kind, numbers finite and
  >= 0, ``gamma``, ``base_lrs``, ``eta_min`` equal to the live ones (the run's config),
  ``_last_lr`` the saved groups' ``lr``, ``gamma`` > 0, ``step_size`` and ``T_max`` >= 1, ``_step_count = last_epoch + 1``
  and ``last_epoch`` equal to the checkpoint's epoch (``sched.interval: epoch``) or
  step (``interval: step``) when the checkpoint has a config.

:func:`check_state_tensors` runs at load time: every ``optim/<index>/<key>`` tensor
belongs to a saved state entry with a decimal index.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from hbnn.schema import short_repr
from hbnn.errors import CheckpointError

__all__ = ["check_state_tensors", "check_optimizer_state", "check_scheduler_state"]

#: state keys per optimizer type (subclasses match their base)
_STATE_KEYS = ((torch.optim.SGD, ("momentum_buffer",)),
               (torch.optim.Adam, ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
               (torch.optim.AdamW, ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")))
#: upper bounds of optimizer hyperparameters (inclusive, exclusive)
_AT_MOST = {"momentum": 1.0, "dampening": 1.0}
_BELOW = {"betas": 1.0}
_INDEX = re.compile(r"0|[1-9][0-9]*")
#: group keys a schedule changes; every other group value comes from the run's config
_SCHEDULED = ("lr",)
#: scheduler keys from the run's config that no resumable key changes (``T_max``,
#: ``step_size`` follow ``train.epochs`` and the steps per epoch)
_FROM_CONFIG = ("gamma", "base_lrs", "eta_min")




def _fail(where: Path, key: str, value: Any, expected: str) -> None:
    raise CheckpointError(f"checkpoint {where}: {key} is {short_repr(value)}; expected {expected}")


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _kind(value: Any) -> str:
    return "list" if isinstance(value, (list, tuple)) else type(value).__name__


def _same_kind(where: Path, key: str, value: Any, live: Any) -> None:
    """``value`` has ``live``'s JSON kind (lists: same length, element-wise); numbers finite, >= 0."""
    if isinstance(value, torch.Tensor) or isinstance(live, torch.Tensor):
        if not (isinstance(value, torch.Tensor) and isinstance(live, torch.Tensor)) \
                or tuple(value.shape) != tuple(live.shape):
            _fail(where, key, value, f"what this object holds ({short_repr(live)})")
        return
    if _kind(value) != _kind(live):
        _fail(where, key, value, f"a {_kind(live)} like this object's {short_repr(live)}")
    if isinstance(live, (list, tuple)):
        if len(value) != len(live):
            _fail(where, key, value, f"{len(live)} entries")
        for i, (v, lv) in enumerate(zip(value, live)):
            _same_kind(where, f"{key}[{i}]", v, lv)
    elif isinstance(live, dict):
        if sorted(value, key=str) != sorted(live, key=str):
            _fail(where, key, sorted(value, key=str), f"the keys {sorted(live, key=str)}")
        for k in live:
            _same_kind(where, f"{key}.{k}", value[k], live[k])
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            _fail(where, key, value, "a finite number >= 0")


def check_state_tensors(opt: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], where: Path) -> None:
    """Every ``optim/<index>/<key>`` tensor has a saved state entry; indices are decimal."""
    state = opt["state"]
    for index, entry in state.items():
        if not _INDEX.fullmatch(index):
            _fail(where, "metadata field optimizer.state", index, "parameter indices (0, 1, ...) as keys")
        if not isinstance(entry, dict):
            _fail(where, f"metadata field optimizer.state.{index}", entry, "an object")
    for name in tensors:
        if not name.startswith("optim/"):
            continue
        parts = name.split("/")
        if len(parts) != 3 or parts[1] not in state:
            _fail(where, "tensor", name, "optim/<index>/<key> of a saved optimizer.state entry")


def _param_shapes(optimizer: Any, live: Mapping[str, Any]) -> dict[int, tuple]:
    shapes = {}
    for group, own in zip(live["param_groups"], optimizer.param_groups):
        for index, param in zip(group["params"], own["params"]):
            shapes[index] = tuple(param.shape)
    return shapes


def _check_group(where: Path, i: int, group: Any, live: Mapping[str, Any]) -> None:
    key = f"optimizer.param_groups[{i}]"
    if not isinstance(group, dict):
        _fail(where, key, group, "an object")
    optional = {"initial_lr"} - set(live)
    if set(live) - set(group) or set(group) - set(live) - optional:
        _fail(where, key, sorted(group), f"the keys of this optimizer's groups ({', '.join(sorted(live))})")
    params = group["params"]
    if not isinstance(params, list) or any(isinstance(p, bool) or not isinstance(p, int) for p in params) \
            or params != list(live["params"]):
        _fail(where, f"{key}.params", params, f"this optimizer's parameter indices {short_repr(live['params'])}")
    for name, value in group.items():
        if name == "params":
            continue
        if name in live:
            _same_kind(where, f"{key}.{name}", value, live[name])
            if name not in _SCHEDULED and value != _plain(live[name]):
                _fail(where, f"{key}.{name}", value, f"this optimizer's {short_repr(live[name])} (the run's config)")
        else:  # initial_lr saved by a scheduler the live optimizer does not have yet
            _same_kind(where, f"{key}.{name}", value, 1.0)
        values = value if isinstance(value, list) else [value]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if name in _AT_MOST and any(v > _AT_MOST[name] for v in numbers):
            _fail(where, f"{key}.{name}", value, f"a number in [0, {_AT_MOST[name]}]")
        if name in _BELOW and any(v >= _BELOW[name] for v in numbers):
            _fail(where, f"{key}.{name}", value, f"numbers in [0, {_BELOW[name]})")


def _check_entry(where: Path, index: int, entry: Any, keys: tuple | None, shape: tuple) -> None:
    key = f"optimizer.state.{index}"
    if not isinstance(entry, dict):
        _fail(where, key, entry, "an object")
    for name, value in entry.items():
        if keys is not None and name not in keys:
            _fail(where, f"{key}.{name}", "present", f"only the keys {', '.join(keys)}")
        if name == "step" and not isinstance(value, torch.Tensor):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                _fail(where, f"{key}.step", value, "a finite number >= 0")
            continue
        want = () if name == "step" else shape
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or tuple(value.shape) != want:
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else value
            _fail(where, f"{key}.{name}", got, f"a floating tensor of shape {want}")


def check_optimizer_state(state: Mapping[str, Any], optimizer: Any, where: Path) -> None:
    """Compare a saved optimizer ``state_dict`` with the live optimizer's (module docstring)."""
    live = optimizer.state_dict()
    groups = state["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(live["param_groups"]):
        _fail(where, "optimizer.param_groups", groups, f"{len(live['param_groups'])} parameter group(s)")
    for i, (group, own) in enumerate(zip(groups, live["param_groups"])):
        _check_group(where, i, group, own)
    keys = next((k for cls, k in _STATE_KEYS if isinstance(optimizer, cls)), None)
    shapes = _param_shapes(optimizer, live)
    for index, entry in state["state"].items():
        if index not in shapes:
            _fail(where, "optimizer.state", index, f"entries for parameter indices 0..{len(shapes) - 1}")
        _check_entry(where, index, entry, keys, shapes[index])


def check_scheduler_state(state: Mapping[str, Any], scheduler: Any, meta: Mapping[str, Any], where: Path,
                          groups: list | None = None) -> None:
    """Compare a saved scheduler ``state_dict`` with the live scheduler's (module docstring).

    ``groups``: the saved optimizer's (checked) parameter groups, whose ``lr`` must be the
    scheduler's ``_last_lr``.
    """
    live = scheduler.state_dict()
    _same_kind(where, "scheduler", state, live)
    for name in _FROM_CONFIG:
        if name in state and _plain(state[name]) != _plain(live[name]):
            _fail(where, f"scheduler.{name}", state[name], f"this scheduler's {short_repr(live[name])} (the run's config)")
    if groups is not None and "_last_lr" in state and state["_last_lr"] != [g["lr"] for g in groups]:
        _fail(where, "scheduler._last_lr", state["_last_lr"], f"the optimizer's learning rates "
              f"{short_repr([g['lr'] for g in groups])}")
    if "gamma" in state and not state["gamma"] > 0:
        _fail(where, "scheduler.gamma", state["gamma"], "a number > 0")
    for name in ("step_size", "T_max"):
        if name in state and state[name] < 1:
            _fail(where, f"scheduler.{name}", state[name], "an integer >= 1")
    last = state.get("last_epoch")
    if "_step_count" in state and last is not None and state["_step_count"] != last + 1:
        _fail(where, "scheduler._step_count", state["_step_count"], f"last_epoch + 1 ({last + 1})")
    config = meta.get("config")
    if last is not None and isinstance(config, dict):
        unit = "step" if config["sched"]["interval"] == "step" else "epoch"
        if last != meta[unit]:
            _fail(where, "scheduler.last_epoch", last, f"the checkpoint's {unit} ({meta[unit]}): the schedule "
                  f"is stepped once per {unit}")
