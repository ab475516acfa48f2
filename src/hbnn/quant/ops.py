"""Bit-map selection as ``torch.library`` custom ops (namespace ``hbnn``), so tracers see ops.

Algorithm 1 runs in C through ctypes (:mod:`hbnn.quant.select_c`) or in numpy, and reads
tensor values into Python; ``torch.compile`` would break its graph there and
``torch.export`` would fail. The quantizers call these ops instead; each op's body is
the eager selection code itself (same functions, same bits), and its fake (meta)
implementation gives the output shapes, so the compiler and the exporter keep one graph:

=============================  ========================================================
op                             result
=============================  ========================================================
``hbnn::mean_abs``             ``mean |x|``, 0-dim (middle-out's reference magnitude)
``hbnn::weight_map``           int8 map of ``w``'s shape (``WeightQuantizer.bitmap``)
``hbnn::act_select``           training selection of an activation: ``(int8 map of x's
                               shape, float64 [J] cut thresholds, mean |x|)``
``hbnn::act_threshold_map``    the inference map at running thresholds (int8, x's shape)
=============================  ========================================================

``J = len(bits) - 1`` cut thresholds for a keyed heuristic, 0 for ``random``. The mean
magnitude is 0-dim, ``x``'s dtype for float32/float64 inputs (float32 otherwise); it is
meaningful for ``middle_out`` only (0 otherwise). A mix crosses the op boundary as
``bits: int[]`` and ``fractions: float[]`` (exact: the floats are doubles), a structure as
``kind: str`` and ``size: int`` (:class:`hbnn.quant.structure.Structure`).

:func:`threshold_map_torch` is the inference map in plain torch ops (no op, no C):
``M_u = b_0 + sum_j (b_{j+1} - b_j) [key_u > t_j]`` with tensor thresholds, equal to
``hbnn::act_threshold_map`` bit for bit. ``torch.jit.trace`` / ``torch.onnx.export``
(TorchScript) record it instead of the op, so an ONNX graph holds only standard operators.

Importing this module registers the ops (a few dictionary entries, no compilation; the C
kernels load on the first call).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from hbnn.quant.bitmap import DEFAULT_SEED, keyed_bitmap, sampled_bitmap, unchecked_bitmap
from hbnn.quant.keys import heuristic_key, mean_magnitude
from hbnn.quant.mix import BitMix
from hbnn.quant.structure import Structure, threshold_unit_map, unit_bitmap, unit_select

__all__ = ["mean_abs", "weight_map", "act_select", "act_threshold_map", "threshold_map_torch", "mix_args", "structure_args",
           "seeded_generator", "untraced"]


@functools.lru_cache(maxsize=64)
def _mix(bits: tuple[int, ...], fractions: tuple[float, ...]) -> BitMix:
    return BitMix(dict(zip(bits, fractions)))


def mix_args(mix: BitMix) -> tuple[list[int], list[float]]:
    """``(bits, fractions)`` of ``mix`` as the ops take them."""
    return list(mix.bits), list(mix.fractions)


def structure_args(structure: Structure) -> tuple[str, int]:
    """``(kind, size)`` of ``structure`` as the ops take them."""
    return structure.kind, structure.size


def seeded_generator(seed: int) -> torch.Generator:
    """The ``random`` heuristic's generator for a spec's ``seed`` (``DEFAULT_SEED + seed``)."""
    return torch.Generator().manual_seed(DEFAULT_SEED + seed)


def _mean_abs_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


# ------------------------------------------------------------------------ mean magnitude
@torch.library.custom_op("hbnn::mean_abs", mutates_args=())
def mean_abs(x: Tensor) -> Tensor:
    """``mean |x|`` (:func:`hbnn.quant.keys.mean_magnitude`: C for float32 CPU tensors), 0-dim."""
    return mean_magnitude(x.detach()).to(device=x.device, dtype=_mean_abs_dtype(x)).clone()


@mean_abs.register_fake
def _(x):
    return x.new_empty((), dtype=_mean_abs_dtype(x))


# --------------------------------------------------------------------------- weight map
@torch.library.custom_op("hbnn::weight_map", mutates_args=())
def weight_map(w: Tensor, heuristic: str, bits: list[int], fractions: list[float], kind: str, size: int,
               allocate: str, seed: int, channel_dim: int | None) -> Tensor:
    """The weight's bit map (Algorithm 1, or error allocation, on its units): int8 of ``w``'s shape.

    ``channel_dim`` is the per-channel scale dim that ``allocate="error"`` measures errors
    with (``None``: per tensor).
    """
    mix, structure = _mix(tuple(bits), tuple(fractions)), Structure(kind, size)
    gen = seeded_generator(seed) if heuristic == "random" else None
    w = w.detach()
    if structure.is_entry and allocate == "key":
        return unchecked_bitmap(w, mix, heuristic, gen, 1).contiguous()
    return unit_bitmap(w, mix, structure, heuristic, allocate, gen, channel_dim).expand().contiguous()


@weight_map.register_fake
def _(w, heuristic, bits, fractions, kind, size, allocate, seed, channel_dim):
    return w.new_empty(w.shape, dtype=torch.int8)


# ------------------------------------------------------------------ activation selection
@torch.library.custom_op("hbnn::act_select", mutates_args=())
def act_select(x: Tensor, heuristic: str, bits: list[int], fractions: list[float], kind: str, size: int,
               feature_dim: int, sampled: bool, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 1 on an activation batch: ``(int8 map, float64 [J] thresholds, mean |x|)``.

    Per entry: the fused C selection (exact, or ``sampled`` thresholds); structured: the
    unit keys (:func:`hbnn.quant.structure.unit_select`); ``random``: a seeded permutation.
    """
    mix, structure = _mix(tuple(bits), tuple(fractions)), Structure(kind, size)
    x = x.detach()
    mean_abs = mean_magnitude(x) if heuristic == "middle_out" else None
    if not structure.is_entry:
        gen = seeded_generator(seed) if heuristic == "random" else None
        units, thresholds = unit_select(x, mix, structure, heuristic, "key", gen, mean_abs,
                                        feature_dim=feature_dim, sampled=sampled)
        bitmap = units.expand()
    elif heuristic == "random":
        bitmap, thresholds = unchecked_bitmap(x, mix, "random", seeded_generator(seed), 1), []
    elif sampled:
        bitmap, thresholds = sampled_bitmap(x, mix, heuristic, mean_abs)
    else:
        bitmap, thresholds = keyed_bitmap(x, mix, heuristic, mean_abs)
    if mean_abs is None:
        mean_abs = torch.zeros((), dtype=_mean_abs_dtype(x))
    return (bitmap.contiguous(), torch.tensor(thresholds, dtype=torch.float64),
            mean_abs.to(device=x.device, dtype=_mean_abs_dtype(x)).clone())


@act_select.register_fake
def _(x, heuristic, bits, fractions, kind, size, feature_dim, sampled, seed):
    cuts = 0 if heuristic == "random" else len(bits) - 1
    return (x.new_empty(x.shape, dtype=torch.int8), x.new_empty((cuts,), dtype=torch.float64, device="cpu"),
            x.new_empty((), dtype=_mean_abs_dtype(x)))


# ----------------------------------------------------------------- activation inference
@torch.library.custom_op("hbnn::act_threshold_map", mutates_args=())
def act_threshold_map(x: Tensor, thresholds: Tensor, mean_abs: Tensor, heuristic: str, bits: list[int],
                      fractions: list[float], kind: str, size: int, feature_dim: int, seed: int) -> Tensor:
    """The inference map of an activation at running thresholds (int8 of ``x``'s shape).

    ``M_u = b_0 + sum_j (b_{j+1} - b_j) [key_u > t_j]`` (:func:`hbnn.quant.structure.threshold_unit_map`,
    fused in C per entry); ``random`` maps by the seeded permutation of the units.
    """
    mix, structure = _mix(tuple(bits), tuple(fractions)), Structure(kind, size)
    x = x.detach()
    if heuristic == "random":
        units = unit_bitmap(x, mix, structure, "random", generator=seeded_generator(seed), feature_dim=feature_dim)
    else:
        units = threshold_unit_map(x, mix, heuristic, thresholds.tolist(), mean_abs.to(x.device), structure,
                                   feature_dim)
    return units.expand().contiguous()


@act_threshold_map.register_fake
def _(x, thresholds, mean_abs, heuristic, bits, fractions, kind, size, feature_dim, seed):
    return x.new_empty(x.shape, dtype=torch.int8)


def threshold_map_torch(x: Tensor, thresholds: Tensor, mean_abs: Tensor, heuristic: str, mix: BitMix,
                        structure: Structure, feature_dim: int) -> Tensor:
    """``hbnn::act_threshold_map`` for a keyed heuristic in plain torch ops (see the module docstring).

    The key is :func:`hbnn.quant.keys.heuristic_key` (middle-out from ``mean_abs``), averaged
    per unit; each comparison is ``key > t_j`` in the key's dtype, as the C pass does.
    """
    key = heuristic_key(x.detach(), heuristic, mean_abs.to(x.device))
    if not structure.is_entry:
        key = structure.unit_means(key, feature_dim)
    t = thresholds.to(device=key.device, dtype=key.dtype)
    out = torch.full(key.shape, mix.bits[0], dtype=torch.int8, device=key.device)
    for j in range(len(mix.bits) - 1):
        out = out + (key > t[j]).to(torch.int8) * (mix.bits[j + 1] - mix.bits[j])
    if structure.is_entry:
        return out.reshape(x.shape)
    # unit -> entries as one gather by a constant index (the index depends on the shape only)
    index = untraced(_unit_index, structure, tuple(x.shape), feature_dim, x.device)
    return out[index]


def _unit_index(structure: Structure, shape: tuple, feature_dim: int, device) -> Tensor:
    """int64 tensor of ``shape``: the unit of every entry."""
    return structure.expand(torch.arange(structure.n_units(shape, feature_dim), device=device), shape, feature_dim)


def untraced(fn, *args):
    """``fn(*args)`` outside any ``torch.jit.trace`` recording: its result enters a trace as a constant."""
    state = torch._C._get_tracing_state()
    if state is None:
        return fn(*args)
    torch._C._set_tracing_state(None)
    try:
        return fn(*args)
    finally:
        torch._C._set_tracing_state(state)
