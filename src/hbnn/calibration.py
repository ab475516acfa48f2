"""Calibrate activation quantizers: set their running estimates from data, touching nothing else.

At inference an :class:`~hbnn.quant.modules.ActQuantizer` binarizes with running
estimates (mean magnitude, Algorithm 1 thresholds, per-bit scales, realized bits) that
training gathers like batch-norm statistics. :func:`calibrate` sets them from a few
batches without training: every activation quantizer runs in training mode (batch
statistics, as in training) while every other module stays in eval mode (BatchNorm uses
and keeps its running statistics, dropout is off), under ``torch.no_grad()``.

Rule: each quantizer's estimates become the plain average of its per-batch values over
the calibration batches, ``r = (1/n) sum_k batch_k`` (folded in with weight ``1/k`` at the
``k``-th batch: BatchNorm's ``momentum=None`` rule), replacing what was there; its
``num_batches_tracked`` grows by ``n`` (> 0 is what marks an estimate as measured: the
summary's ``realized`` bits, and what :func:`hbnn.export.export_model` requires).

Nothing else changes: parameters are never written, every buffer outside the activation
quantizers (BatchNorm statistics, weight quantizers' realized bits, a user module's
counters) is restored bit for bit, and each module's train/eval mode is restored. If a
batch fails, the activation estimates are restored too (nothing half-calibrated).
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from typing import Any, Iterable

import torch
from torch import nn

from hbnn.errors import ConfigError
from hbnn.quant.modules import ActQuantizer

__all__ = ["CalibrationReport", "calibrate", "format_calibration"]

_SUFFIX = ".act_quantizer"


@dataclasses.dataclass
class CalibrationReport:
    """What :func:`calibrate` did.

    Attributes:
        batches: batches run through the model.
        samples: samples in those batches (their first dimension).
        layers: one entry per activation quantizer, in module order: ``{"name"`` (the
            layer it quantizes the input of), ``"batches"`` (batches it saw),
            ``"bits_before"``, ``"kind_before"`` (``target``: initial value, never saw
            data; ``realized``: measured), ``"bits_after"``, ``"kind_after"}``.
        missed: names of quantizers no batch reached (their estimates are unchanged).
    """

    batches: int
    samples: int
    layers: list[dict]
    missed: list[str]

    @property
    def calibrated(self) -> int:
        """Number of quantizers whose estimates were set."""
        return len(self.layers) - len(self.missed)

    def as_dict(self) -> dict:
        """JSON-safe form."""
        return {**dataclasses.asdict(self), "calibrated": self.calibrated}


def _bits_kind(q: ActQuantizer) -> str:
    return "realized" if int(q.num_batches_tracked) > 0 else "target"


def _layer_name(fqn: str) -> str:
    return fqn[: -len(_SUFFIX)] if fqn.endswith(_SUFFIX) else (fqn or "<model>")


def _check_max_batches(max_batches: Any) -> None:
    if max_batches is None:
        return
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ConfigError(f"calibrate: max_batches={max_batches!r} is invalid; expected an integer >= 1 or None")


def _inputs(batch: Any, index: int) -> torch.Tensor:
    """The model input of a batch: a tensor, or the first item of a tuple/list (``(x, y)``)."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ConfigError(f"calibrate: batch {index} is {type(x).__name__}; expected a tensor of inputs "
                          "or an (inputs, targets) pair")
    return x


def _device(model: nn.Module) -> torch.device | None:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return None


def _run(model: nn.Module, batches: Iterable, max_batches: int | None) -> tuple[int, int]:
    device = _device(model)
    count = samples = 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x = _inputs(batch, i)
        model(x if device is None else x.to(device))
        count, samples = count + 1, samples + int(x.shape[0])
    return count, samples


def calibrate(model: nn.Module, batches: Iterable, *, max_batches: int | None = None) -> CalibrationReport:
    """Set every activation quantizer's running estimates to its average over ``batches``.

    See the module docstring for the rule and the guarantees (no parameter, BatchNorm
    statistic or other buffer changes; modes restored; no autograd).

    Args:
        model: a model holding :class:`~hbnn.quant.modules.ActQuantizer` modules (e.g.
            after :func:`hbnn.quantize_` with activation bits).
        batches: an iterable of input tensors or ``(inputs, targets, ...)`` tuples (a
            ``DataLoader`` works); inputs are moved to the model's device.
        max_batches: stop after this many batches (None: all of them).

    Returns:
        :class:`CalibrationReport`. Quantizers no batch reached are listed in ``missed``
        and warned about (their estimates are unchanged).

    Raises:
        ConfigError: no activation quantizer in ``model``, no batch, a batch without a
            tensor, or a bad ``max_batches``. Errors from the model's forward pass
            propagate; in every failure the model is left as it was.
    """
    _check_max_batches(max_batches)
    quantizers = [(n, m) for n, m in model.named_modules() if isinstance(m, ActQuantizer)]
    if not quantizers:
        raise ConfigError("calibrate: the model has no activation quantizer (quantize it with activation bits, "
                          "e.g. hbnn.quantize_(model, {'act': 1.4, ...}))")
    before = [(q.realized_bits(), _bits_kind(q)) for _, q in quantizers]
    own = {id(t) for _, q in quantizers for t in q.buffers()}
    saved = {name: t.detach().clone() for name, t in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    counts: list[int] = []
    try:
        model.eval()
        for _, q in quantizers:
            q.train()
            q.start_calibration()
        with torch.no_grad():
            batches_run, samples = _run(model, batches, max_batches)
        counts = [q.stop_calibration() for _, q in quantizers]
        if batches_run == 0:
            raise ConfigError("calibrate: no batches (the iterable was empty)")
    except BaseException:
        for _, q in quantizers:
            q.stop_calibration()
        _restore(model, saved, keep=set())
        raise
    finally:
        for m, training in modes.items():
            m.training = training
    _restore(model, saved, keep=own)
    layers, missed = [], []
    for (fqn, q), (bits, kind), n in zip(quantizers, before, counts):
        name = _layer_name(fqn)
        layers.append({"name": name, "batches": n, "bits_before": bits, "kind_before": kind,
                       "bits_after": q.realized_bits(), "kind_after": _bits_kind(q)})
        if n == 0:
            missed.append(name)
    if missed:
        warnings.warn(f"calibrate: no batch reached the activation quantizer of {', '.join(missed)}; "
                      "its estimates are unchanged", stacklevel=2)
    return CalibrationReport(batches_run, samples, layers, missed)


def _restore(model: nn.Module, saved: dict, keep: set) -> None:
    """Copy the saved values back into every buffer whose id is not in ``keep``."""
    with torch.no_grad():
        for name, t in model.named_buffers():
            if id(t) not in keep and name in saved:
                t.copy_(saved[name])


def format_calibration(report: CalibrationReport) -> str:
    """A short text table of a :class:`CalibrationReport`: act bits per layer before and after."""
    head = f"{'layer':<32} {'batches':>7} {'a bits before':>16} {'a bits after':>16}"
    lines = [f"calibrated {report.calibrated} of {len(report.layers)} activation quantizers on "
             f"{report.batches} batches ({report.samples} samples)", head, "-" * len(head)]
    for r in report.layers:
        lines.append(f"{r['name'][:32]:<32} {r['batches']:>7} {r['bits_before']:>7.3f} {r['kind_before']:<8} "
                     f"{r['bits_after']:>7.3f} {r['kind_after']:<8}")
    if report.missed:
        lines.append(f"not reached (unchanged): {', '.join(report.missed)}")
    return "\n".join(lines)
