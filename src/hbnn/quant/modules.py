"""Quantizer modules: a weight quantizer and an activation quantizer.

Training recomputes the bit map at every forward pass (Algorithm 1 on the current
tensor). At inference:

* weights use the bit map of the current weights (cached until the weights change);
* activations use calibrated running estimates gathered during training like batch-norm
  statistics — mean magnitude, the Algorithm 1 thresholds on the heuristic key, and the
  per-bit scales — so the map and the planes are an elementwise function of the input
  (no per-input selection). ``eval_mode="exact"`` recomputes everything per input instead.

Structured maps (``QuantSpec.structure``, :mod:`hbnn.quant.structure`) give one bitwidth
per unit; ``WeightQuantizer.unit_map`` and ``ActQuantizer.running_unit_map`` return the
per-unit map (:class:`hbnn.quant.structure.UnitMap`) for exporters. For activations the
selection and the running thresholds are on the unit key (the mean of the entries' keys).

Tracing and compiling: the forward passes call the selection through the ``hbnn`` custom
ops (:mod:`hbnn.quant.ops`) and join ``x_hat`` to ``x`` with the tensor-only
:func:`hbnn.quant.ste.clipped_ste`, so ``torch.compile`` and ``torch.export`` see one graph.
Python-side state is left out of traced graphs: the eval weight-map cache (a compiled or
exported graph recomputes the map, the same map) and the eval branch on
``num_batches_tracked == 0`` (a ``torch.cond`` on the buffer under compile/export; the
EMA weights and calibration's batch count are tensors, so no step changes a guard; under
``torch.jit.trace`` the current state and the weight maps are constants, and activation
maps use :func:`hbnn.quant.ops.threshold_map_torch`, plain torch ops).
"""

from __future__ import annotations

import torch
from torch import nn

from hbnn.quant import ops
from hbnn.quant.bitmap import average_bits
from hbnn.quant.config import QuantSpec
from hbnn.quant.functional import binarize_with_scales, residual_forward
from hbnn.quant.ste import clipped_ste
from hbnn.quant.structure import UnitMap, parse_structure, structure_of, threshold_unit_map, unit_bitmap

__all__ = ["WeightQuantizer", "ActQuantizer"]


class WeightQuantizer(nn.Module):
    """Binarizes a weight tensor with a bit mix (Eq. 5 + Algorithm 1) and the clipped STE.

    Args:
        spec: the :class:`QuantSpec` (bits, heuristic, block, per_channel, structure, allocate).
        channel_dim: the output-channel dim for per-channel scales (0 for conv/linear).

    Raises:
        ConfigError: an activation-only structure (``pixel``, ``group<G>``).
    """

    def __init__(self, spec: QuantSpec | dict | float | int, channel_dim: int = 0):
        super().__init__()
        self.spec = QuantSpec.from_dict(spec)
        self.spec.check_role("weight")
        #: The map's units (:class:`hbnn.quant.structure.Structure`; the legacy ``block`` included).
        self.structure = structure_of(self.spec)
        self.channel_dim = channel_dim
        self.register_buffer("realized", torch.tensor(float(self.spec.mix.average)))
        self._cache: tuple | None = None

    @property
    def mix(self):
        """The bit mix."""
        return self.spec.mix

    def bitmap(self, weight: torch.Tensor) -> torch.Tensor:
        """The bit map of ``weight`` (Algorithm 1 or error allocation on its units): int8, its shape."""
        spec = self.spec
        cdim = self.channel_dim if spec.per_channel else None
        return ops.weight_map(weight.detach(), spec.heuristic, *ops.mix_args(spec.mix),
                              *ops.structure_args(self.structure), spec.allocate, spec.seed, cdim)

    def unit_map(self, weight: torch.Tensor) -> UnitMap:
        """The per-unit map of ``weight`` (``.bits`` ``[n_units]``, ``.levels(mix)``, ``.expand()``)."""
        spec = self.spec
        gen = ops.seeded_generator(spec.seed) if spec.heuristic == "random" else None
        cdim = self.channel_dim if spec.per_channel else None
        with torch.no_grad():
            return unit_bitmap(weight.detach(), spec.mix, self.structure, spec.heuristic, spec.allocate, gen, cdim)

    def _current_bitmap(self, weight: torch.Tensor) -> torch.Tensor | None:
        if self.spec.mix.is_homogeneous:
            return None
        if self.training:
            self._cache = None
            return self.bitmap(weight)
        if torch.compiler.is_compiling():  # no Python cache inside a graph: the op recomputes the map
            return self.bitmap(weight)
        key = (weight.data_ptr(), weight._version, weight.shape, weight.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.bitmap(weight))
        return self._cache[1]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """``w_hat`` (Eq. 5) with the STE gradient ``grad * 1{|w| <= 1}``.

        Under ``torch.jit.trace`` in eval mode ``w_hat`` is computed outside the trace: the
        traced graph (and an ONNX file) holds the binarized weight as a constant.
        """
        if torch.jit.is_tracing() and not self.training:
            return ops.untraced(self._w_hat, weight.detach())
        return clipped_ste(weight, self._w_hat(weight.detach()))

    def _w_hat(self, weight: torch.Tensor) -> torch.Tensor:
        bitmap = self._current_bitmap(weight)
        if bitmap is not None:
            self.realized.copy_(bitmap.float().mean())  # average_bits, kept as a tensor
        cdim = self.channel_dim if self.spec.per_channel else None
        return residual_forward(weight, bitmap, self.spec.mix.max_bits, cdim)[0]

    def realized_bits(self, weight: torch.Tensor | None = None) -> float:
        """Mean of the bit map of ``weight`` (default: as of the last forward pass)."""
        if weight is None:
            return float(self.realized)
        return average_bits(self.bitmap(weight), self.mix)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"bits={s.mix}, heuristic={s.heuristic}, block={s.block}, per_channel={s.per_channel}"
                + _structure_repr(s))


def _structure_repr(spec: QuantSpec) -> str:
    """``, structure=..., allocate=...`` for non-default settings."""
    extra = "" if spec.structure == "entry" else f", structure={spec.structure}"
    return extra + ("" if spec.allocate == "key" else f", allocate={spec.allocate}")


class ActQuantizer(nn.Module):
    """Binarizes activations with a bit mix; keeps running estimates for inference.

    Buffers (updated in training with ``r <- (1 - momentum) r + momentum * batch``, saturated
    to float32's finite range so that any finite input keeps them finite):
    ``running_mean_abs`` (mean ``|x|``, the middle-out reference), ``running_thresholds``
    (the heuristic-key values at Algorithm 1's cuts), ``running_scales`` (``mu_i``),
    ``running_bits`` (realized average bits). ``num_batches_tracked`` counts the batches
    folded in; 0 means the estimates are still their initial values (never saw data: the
    summary calls its bits a *target*, export refuses it).

    Calibration (:func:`hbnn.calibrate`): between :meth:`start_calibration` and
    :meth:`stop_calibration`, training-mode batches replace the estimates by their
    cumulative average instead of the momentum EMA -- the ``k``-th batch (``k = 1, 2, ...``)
    is folded in with weight ``1 / k``, so after ``n`` batches ``r = (1/n) sum_k batch_k``
    (BatchNorm's ``momentum=None`` rule); the first batch replaces the previous estimates.

    With a structured map (``pixel``, ``group<G>``) the training selection ranks units by
    their mean key, ``running_thresholds`` are unit-key values and ``running_bits`` is the
    entry-weighted average; inference compares each unit's key with the thresholds.

    Args:
        spec: the :class:`QuantSpec`.
        feature_dim: the input's channel/feature dim for ``pixel``/``group<G>`` units: 1 for
            conv inputs ``[B, C, H, W]`` (and ``[B, K]``), -1 for linear inputs ``[..., K]``.

    Raises:
        ConfigError: a weight-only structure or ``allocate: error``.
    """

    # Calibration state (not saved): whether it runs, and its batch count as a float64 0-dim
    # tensor, counted inside a compiled graph (a Python int would be a guard: a graph per batch).
    _calibrating: bool = False
    _calibration_count: torch.Tensor | None = None

    def __init__(self, spec: QuantSpec | dict | float | int, feature_dim: int = 1):
        super().__init__()
        self.spec = QuantSpec.from_dict(spec)
        self.spec.check_role("act")
        #: The map's units (:class:`hbnn.quant.structure.Structure`; ``block`` applies to weights only).
        self.structure = parse_structure(self.spec.structure)
        self.feature_dim = feature_dim
        mix = self.spec.mix
        self.register_buffer("running_mean_abs", torch.tensor(1.0))
        self.register_buffer("running_thresholds", torch.zeros(len(mix.bits) - 1))
        self.register_buffer("running_scales", torch.zeros(mix.max_bits))
        self.register_buffer("running_bits", torch.tensor(float(mix.average)))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @property
    def mix(self):
        """The bit mix."""
        return self.spec.mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x_hat`` with the clipped STE; batch statistics in training, running ones in eval."""
        if self.training or self.spec.eval_mode == "exact":
            return self._forward_batch(x)
        if torch.compiler.is_compiling():  # the buffer's value is data: branch inside the graph
            return torch.cond(self.num_batches_tracked > 0, self._forward_running, self._forward_batch, (x,))
        if ops.untraced(int, self.num_batches_tracked) == 0:
            return self._forward_batch(x)
        return self._forward_running(x)

    # ---------------------------------------------------------------- training
    def _forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        mix = self.spec.mix
        bitmap = thresholds = mean_abs = None
        if not mix.is_homogeneous:
            bitmap, thresholds, mean_abs = self._select_batch(x.detach())
        elif self.training and self.spec.heuristic == "middle_out":
            mean_abs = ops.mean_abs(x.detach())  # tracked for a later heterogeneous use of the estimates
        x_hat, scales = residual_forward(x.detach(), bitmap, mix.max_bits)
        out = clipped_ste(x, x_hat)
        if self.training:
            self._update(scales, thresholds, mean_abs if self.spec.heuristic == "middle_out" else None, bitmap)
        return out

    def _select_batch(self, x: torch.Tensor):
        """``(int8 map, float64 [J] cut thresholds, mean |x|)`` of a batch (``hbnn::act_select``)."""
        spec = self.spec
        return ops.act_select(x, spec.heuristic, *ops.mix_args(spec.mix), *ops.structure_args(self.structure),
                              self.feature_dim, spec.select == "sampled", spec.seed)

    def _select(self, x: torch.Tensor):
        """The batch selection as Python values, for inspection: ``(map, thresholds list, mean |x| or None)``."""
        bitmap, thresholds, mean_abs = self._select_batch(x)
        return bitmap, thresholds.tolist(), mean_abs if self.spec.heuristic == "middle_out" else None

    def start_calibration(self) -> None:
        """Make the next training-mode batches set the estimates to their cumulative average."""
        count = self._calibration_count
        if count is None or count.device != self.running_scales.device:
            self._calibration_count = count = torch.zeros((), dtype=torch.float64, device=self.running_scales.device)
        count.zero_()
        self._calibrating = True

    @property
    def calibration_batches(self) -> int | None:
        """Batches folded in since :meth:`start_calibration`; None outside calibration (not saved)."""
        return int(self._calibration_count) if self._calibrating else None

    def stop_calibration(self) -> int:
        """End calibration; return the number of batches it folded in (momentum EMA again)."""
        count, self._calibrating = self.calibration_batches or 0, False
        return count

    def _update(self, scales, thresholds, mean_abs, bitmap) -> None:
        if self._calibrating:  # 1 / k for the k-th batch, in float64 as Python computes it
            m = 1.0 / self._calibration_count.add_(1)
        else:  # 1 for the first batch, else the momentum: a float64 0-dim tensor (no host read)
            count = self.num_batches_tracked
            one, momentum = (torch.tensor(v, dtype=torch.float64, device=count.device) for v in (1.0, self.spec.momentum))
            m = torch.where(count == 0, one, momentum)

        def ema(buf: torch.Tensor, value) -> None:
            # Saturate to the buffer's finite range (a float64 input's statistics may exceed
            # float32's); a no-op for every value that fits, so in-range updates are unchanged.
            # A tensor m is cast to the buffer's dtype first, as a Python float is (a float64
            # 0-dim m would otherwise make 0-dim buffers compute in float64).
            cap = torch.finfo(buf.dtype).max
            value = torch.as_tensor(value, dtype=buf.dtype, device=buf.device).clamp(-cap, cap)
            keep, new = (1 - m, m) if not torch.is_tensor(m) else ((1 - m).to(buf.dtype), m.to(buf.dtype))
            buf.mul_(keep).add_(value * new).clamp_(-cap, cap)

        ema(self.running_scales, scales.float())
        if thresholds is not None and thresholds.numel():
            ema(self.running_thresholds, thresholds.clamp(-1e30, 1e30))  # float64, as the cuts came
        if mean_abs is not None:
            ema(self.running_mean_abs, mean_abs.float())
        ema(self.running_bits, self.spec.mix.average if bitmap is None else bitmap.float().mean())
        self.num_batches_tracked += 1

    # --------------------------------------------------------------- inference
    def running_bitmap(self, x: torch.Tensor) -> torch.Tensor | None:
        """The inference bit map: ``bits[0] + sum_j (bits[j+1] - bits[j]) * [key > t_j]``.

        :func:`hbnn.quant.bitmap.threshold_bitmap` at the running thresholds ``t_j`` and, for
        middle-out, the running mean magnitude; per unit (the unit's mean key, expanded to
        its entries) for a structured map; ``None`` for a homogeneous mix. The packed engine
        binarizes its inputs with this map too.
        """
        units = self.running_unit_map(x)
        return None if units is None else units.expand()

    def running_unit_map(self, x: torch.Tensor) -> UnitMap | None:
        """The inference map per unit (:func:`hbnn.quant.structure.threshold_unit_map`); None if homogeneous."""
        mix, spec = self.spec.mix, self.spec
        if mix.is_homogeneous:
            return None
        x = x.detach()
        if spec.heuristic == "random":
            return unit_bitmap(x, mix, self.structure, "random", generator=ops.seeded_generator(spec.seed),
                               feature_dim=self.feature_dim)
        return threshold_unit_map(x, mix, spec.heuristic, self.running_thresholds.tolist(),
                                  self.running_mean_abs.to(x.device), self.structure, self.feature_dim)

    def _forward_running(self, x: torch.Tensor) -> torch.Tensor:
        return binarize_with_scales(x, self._running_map(x), self.running_scales.to(x.device))

    def _running_map(self, x: torch.Tensor) -> torch.Tensor | None:
        """:meth:`running_bitmap` as the forward pass computes it: ``hbnn::act_threshold_map``,
        or under ``torch.jit.trace`` plain torch ops (``random``: a constant)."""
        mix, spec = self.spec.mix, self.spec
        if mix.is_homogeneous:
            return None
        if torch.jit.is_tracing() and spec.heuristic != "random":
            return ops.threshold_map_torch(x, self.running_thresholds, self.running_mean_abs, spec.heuristic, mix,
                                           self.structure, self.feature_dim)
        args = (x.detach(), self.running_thresholds, self.running_mean_abs, spec.heuristic, *ops.mix_args(mix),
                *ops.structure_args(self.structure), self.feature_dim, spec.seed)
        return ops.untraced(ops.act_threshold_map, *args) if torch.jit.is_tracing() else ops.act_threshold_map(*args)

    def realized_bits(self) -> float:
        """Average activation bits: the running estimate gathered in training."""
        return float(self.running_bits)

    def eval_params(self) -> dict:
        """Everything an inference engine needs to binarize inputs elementwise."""
        s = self.spec
        return {
            "bits": list(s.mix.bits),
            "fractions": list(s.mix.fractions),
            "heuristic": s.heuristic,
            "structure": self.structure.name,
            "feature_dim": self.feature_dim,
            "mean_abs": float(self.running_mean_abs),
            "thresholds": self.running_thresholds.tolist(),
            "scales": self.running_scales.tolist(),
        }

    def extra_repr(self) -> str:
        s = self.spec
        return f"bits={s.mix}, heuristic={s.heuristic}, eval_mode={s.eval_mode}" + _structure_repr(s)
