"""Packed bit planes: the one layout every hbnn kernel reads (a leaf: pure torch, no kernel imports).

A binarized tensor ``x_hat = sum_i scales_i * (2 signs_i - 1) * masks_i`` (paper Eq. 5;
``hbnn.quant.binarize_planes`` produces ``signs``/``masks``/``scales``) is stored as
:class:`PackedPlanes`:

* ``signs``: int64 ``[n, R, ceil(K/64)]`` where ``K = shape[-1]`` and
  ``R = prod(shape[:-1])``; entry ``k`` of a row is bit ``k % 64`` (LSB first) of word
  ``k // 64``; 1 = +1.  Signs are stored only where the entry is active (0 elsewhere) and
  bits past ``K`` are 0, so equal planes pack to equal words.
* ``masks``: same shape (1 = active in that plane), or ``None`` when every plane is full.
* ``full``: per plane, ``True`` when all entries are active; kernels then skip the mask
  (``sum_k = K - 2 popcount(s_w ^ s_x)``) and never read ``masks[i]``.
* ``scales``: float32 ``[n]`` (per tensor) or ``[n, shape[0]]`` (per output channel for
  weights, per sample for activations).
* ``shape``: the logical shape of one plane, packed along its last dim.  Linear layers use
  ``(rows, K)``; convolutions use NHWC activations ``(B, H, W, C)`` and OHWI weights
  ``(O, kh, kw, C)`` so that every kernel position is a contiguous run of channel words.

:func:`pack_bits` / :func:`unpack_bits` are the pure-torch word codec of that layout;
:mod:`hbnn.kernels.packing` builds :class:`PackedPlanes` from planes (C or torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["WORD_BITS", "PackedPlanes", "pack_bits", "unpack_bits", "valid_words"]

WORD_BITS = 64


@dataclass(frozen=True, eq=False)
class PackedPlanes:
    """Bit planes of one binarized tensor, packed along the last logical dim (see module doc)."""

    signs: torch.Tensor
    masks: torch.Tensor | None
    full: tuple[bool, ...]
    scales: torch.Tensor
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        n, rows, words = self.n, self.rows, math.ceil(self.k / WORD_BITS)
        if self.signs.dtype != torch.int64 or tuple(self.signs.shape) != (n, rows, words):
            raise ValueError(
                f"PackedPlanes.signs: expected int64 [{n}, {rows}, {words}], "
                f"got {self.signs.dtype} {list(self.signs.shape)}"
            )
        if self.masks is None and not all(self.full):
            raise ValueError(f"PackedPlanes.masks: None but full={self.full}; masked planes need masks")
        if self.masks is not None and (self.masks.dtype != torch.int64 or self.masks.shape != self.signs.shape):
            raise ValueError(
                f"PackedPlanes.masks: expected int64 {list(self.signs.shape)}, "
                f"got {self.masks.dtype} {list(self.masks.shape)}"
            )
        if self.scales.dtype != torch.float32 or tuple(self.scales.shape) not in ((n,), (n, self.shape[0])):
            raise ValueError(
                f"PackedPlanes.scales: expected float32 [{n}] or [{n}, {self.shape[0]}], "
                f"got {self.scales.dtype} {list(self.scales.shape)}"
            )

    @property
    def n(self) -> int:
        """Number of planes."""
        return len(self.full)

    @property
    def k(self) -> int:
        """Entries per row (the packed dim)."""
        return int(self.shape[-1])

    @property
    def rows(self) -> int:
        """Rows ``R = prod(shape[:-1])``."""
        return math.prod(self.shape[:-1])

    @property
    def per_row_scales(self) -> bool:
        """Whether scales are ``[n, shape[0]]`` rather than ``[n]``."""
        return self.scales.dim() == 2

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(signs, masks, scales)`` with bool ``[n, *shape]`` planes (inverse of packing)."""
        signs = unpack_bits(self.signs, self.k).reshape(self.n, *self.shape)
        if self.masks is None:
            masks = torch.ones_like(signs)
        else:
            masks = unpack_bits(self.masks, self.k).reshape(self.n, *self.shape)
        return signs, masks, self.scales

    def dequantize(self) -> torch.Tensor:
        """``x_hat = sum_i scales_i * (2 signs_i - 1) * masks_i`` as float32 of ``shape``."""
        signs, masks, scales = self.unpack()
        pm = (signs.float() * 2 - 1) * masks.float()
        s = scales.reshape(self.n, *([1] * len(self.shape))) if scales.dim() == 1 else scales.reshape(
            self.n, self.shape[0], *([1] * (len(self.shape) - 1))
        )
        return (pm * s).sum(0)


def valid_words(k: int) -> torch.Tensor:
    """int64 ``[ceil(k/64)]``: the packed row of ``k`` active entries (pad bits zero)."""
    return pack_bits(torch.ones(1, k, dtype=torch.bool))[0]


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor ``[..., K]`` along its last dim into int64 ``[..., ceil(K/64)]`` (pure torch)."""
    k = bits.shape[-1]
    words = math.ceil(k / WORD_BITS)
    padded = torch.nn.functional.pad(bits.to(torch.int64), (0, words * WORD_BITS - k))
    shifts = torch.arange(WORD_BITS, dtype=torch.int64)
    # Bits are distinct powers of two, so the sum is the bitwise or (bit 63 wraps to the sign).
    return (padded.reshape(*bits.shape[:-1], words, WORD_BITS) << shifts).sum(-1)


def unpack_bits(words: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int64 ``[..., W]`` -> bool ``[..., k]``."""
    shifts = torch.arange(WORD_BITS, dtype=torch.int64)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :k].bool()
