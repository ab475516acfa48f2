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
"""

from __future__ import annotations

import torch
from torch import nn

from hbnn.quant.bitmap import (
    DEFAULT_SEED,
    average_bits,
    keyed_bitmap,
    sampled_bitmap,
    unchecked_bitmap,
)
from hbnn.quant.config import QuantSpec
from hbnn.quant.keys import mean_magnitude
from hbnn.quant.functional import binarize_with_scales, residual_forward
from hbnn.quant.ste import clipped_ste
from hbnn.quant.structure import UnitMap, parse_structure, structure_of, threshold_unit_map, unit_bitmap, unit_select

__all__ = ["WeightQuantizer", "ActQuantizer"]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(DEFAULT_SEED + seed)


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
        if self.structure.is_entry and spec.allocate == "key":
            gen = _generator(spec.seed) if spec.heuristic == "random" else None
            with torch.no_grad():
                return unchecked_bitmap(weight.detach(), spec.mix, spec.heuristic, gen, 1)
        return self.unit_map(weight).expand()

    def unit_map(self, weight: torch.Tensor) -> UnitMap:
        """The per-unit map of ``weight`` (``.bits`` ``[n_units]``, ``.levels(mix)``, ``.expand()``)."""
        spec = self.spec
        gen = _generator(spec.seed) if spec.heuristic == "random" else None
        cdim = self.channel_dim if spec.per_channel else None
        with torch.no_grad():
            return unit_bitmap(weight.detach(), spec.mix, self.structure, spec.heuristic, spec.allocate, gen, cdim)

    def _current_bitmap(self, weight: torch.Tensor) -> torch.Tensor | None:
        if self.spec.mix.is_homogeneous:
            return None
        if self.training:
            self._cache = None
            return self.bitmap(weight)
        key = (weight.data_ptr(), weight._version, weight.shape, weight.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.bitmap(weight))
        return self._cache[1]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """``w_hat`` (Eq. 5) with the STE gradient ``grad * 1{|w| <= 1}``."""
        bitmap = self._current_bitmap(weight)
        if bitmap is not None:
            self.realized.fill_(average_bits(bitmap, self.mix))
        cdim = self.channel_dim if self.spec.per_channel else None
        n_bits = self.spec.mix.max_bits
        return clipped_ste(weight, lambda w: residual_forward(w, bitmap, n_bits, cdim)[0])

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

    #: Batches folded in since :meth:`start_calibration`; None outside calibration (not saved).
    calibration_batches: int | None = None

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
        if self.training or self.spec.eval_mode == "exact" or int(self.num_batches_tracked) == 0:
            return self._forward_batch(x)
        return self._forward_running(x)

    # ---------------------------------------------------------------- training
    def _forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        mix, spec = self.spec.mix, self.spec
        bitmap, thresholds, mean_abs = None, [], None
        if not mix.is_homogeneous:
            with torch.no_grad():
                bitmap, thresholds, mean_abs = self._select(x.detach())
        scales_out: list[torch.Tensor] = []

        def fn(t: torch.Tensor) -> torch.Tensor:
            x_hat, scales = residual_forward(t, bitmap, mix.max_bits)
            scales_out.append(scales)
            return x_hat

        out = clipped_ste(x, fn)
        if self.training:
            with torch.no_grad():
                if mean_abs is None and spec.heuristic == "middle_out":
                    mean_abs = mean_magnitude(x.detach())
                self._update(scales_out[0], thresholds, mean_abs, bitmap)
        return out

    def _select(self, x: torch.Tensor):
        spec = self.spec
        if not self.structure.is_entry:
            mean_abs = mean_magnitude(x) if spec.heuristic == "middle_out" else None
            gen = _generator(spec.seed) if spec.heuristic == "random" else None
            units, thresholds = unit_select(x, spec.mix, self.structure, spec.heuristic, "key", gen, mean_abs,
                                            feature_dim=self.feature_dim, sampled=spec.select == "sampled")
            return units.expand(), thresholds, mean_abs
        if spec.heuristic == "random":
            return unchecked_bitmap(x, spec.mix, "random", _generator(spec.seed), 1), [], None
        mean_abs = mean_magnitude(x) if spec.heuristic == "middle_out" else None
        if spec.select == "sampled":
            bitmap, thresholds = sampled_bitmap(x, spec.mix, spec.heuristic, mean_abs)
        else:
            bitmap, thresholds = keyed_bitmap(x, spec.mix, spec.heuristic, mean_abs)
        return bitmap, thresholds, mean_abs

    def start_calibration(self) -> None:
        """Make the next training-mode batches set the estimates to their cumulative average."""
        self.calibration_batches = 0

    def stop_calibration(self) -> int:
        """End calibration; return the number of batches it folded in (momentum EMA again)."""
        count, self.calibration_batches = self.calibration_batches or 0, None
        return count

    def _update(self, scales, thresholds, mean_abs, bitmap) -> None:
        if self.calibration_batches is not None:
            self.calibration_batches += 1
            m = 1.0 / self.calibration_batches
        else:
            first = int(self.num_batches_tracked) == 0
            m = 1.0 if first else self.spec.momentum

        def ema(buf: torch.Tensor, value) -> None:
            # Saturate to the buffer's finite range (a float64 input's statistics may exceed
            # float32's); a no-op for every value that fits, so in-range updates are unchanged.
            cap = torch.finfo(buf.dtype).max
            value = torch.as_tensor(value, dtype=buf.dtype, device=buf.device).clamp(-cap, cap)
            buf.mul_(1 - m).add_(value * m).clamp_(-cap, cap)

        ema(self.running_scales, scales.float())
        if thresholds:
            finite = torch.tensor(thresholds, dtype=torch.float64).clamp(-1e30, 1e30)
            ema(self.running_thresholds, finite)
        if mean_abs is not None:
            ema(self.running_mean_abs, mean_abs.float())
        ema(self.running_bits, average_bits(bitmap, self.spec.mix))
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
            return unit_bitmap(x, mix, self.structure, "random", generator=_generator(spec.seed),
                               feature_dim=self.feature_dim)
        return threshold_unit_map(x, mix, spec.heuristic, self.running_thresholds.tolist(),
                                  self.running_mean_abs.to(x.device), self.structure, self.feature_dim)

    def _forward_running(self, x: torch.Tensor) -> torch.Tensor:
        bitmap = self.running_bitmap(x)
        scales = self.running_scales.to(x.device)
        return binarize_with_scales(x, bitmap, scales)

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
