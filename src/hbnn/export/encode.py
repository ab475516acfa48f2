"""Compact on-disk encoding of binarized weights: sign streams, nested bit maps, scales.

A binarized weight ``W`` of ``N`` entries (PyTorch order, e.g. OIHW) with bit map ``M``
(values from the mix's bitwidths ``b_0 < ... < b_{K-1}``) has planes ``i = 0..n-1``
(``n = b_{K-1}``) with active sets ``A_i = {j : M_j > i}`` (``A_0`` = everything) and
``w_hat = sum_i mu_i (2 s_i - 1) 1{A_i}`` (paper Eq. 5). On disk:

* **signs** -- one bit stream: plane 0's signs on ``A_0``, then plane 1's on ``A_1``, ...
  (each in flatten order), packed LSB first into int64 words
  (:func:`hbnn.kernels.packing.pack_bits`). It holds exactly ``sum_i |A_i| = sum_j M_j``
  bits (the average bitwidth times ``N``) plus < 64 bits of padding.
* **map** -- the level ``l_u`` (index into the mix's bitwidths) of every map unit ``u``
  (an entry, or a block of ``block`` inputs of one output row), as nested masks
  (a unary code): for ``k = 1..K-1`` the bits ``[l_u >= k]`` of the units with
  ``l_u >= k - 1``. That is ``sum_{k<K} P(l >= k - 1)`` bits per unit, e.g.
  ``1 + 0.3 = 1.3`` for 70/20/10 (fixed-width codes need 2), 1 for any two-bitwidth mix
  and 0 for a homogeneous one.
* **scales** -- float32 ``[n]`` (per tensor) or ``[n, O]`` (per output channel).

Structured maps (``block<K>``, ``channel``; format version 3) store one fixed-width code
per unit instead of the nested masks: :mod:`hbnn.export.units`.

Decoding rebuilds bool planes ``[n, *shape]``; the engine packs them into the kernels'
layout (:func:`hbnn.kernels.pack_conv_weight` / :func:`hbnn.kernels.pack_planes`).
"""

from __future__ import annotations

import math

import torch

from hbnn.errors import FormatError
from hbnn.kernels.packing import WORD_BITS, pack_bits, unpack_bits
from hbnn.quant.bitmap import block_view_shape, expand_blocks

__all__ = [
    "pack_stream",
    "unpack_stream",
    "encode_levels",
    "decode_levels",
    "unit_levels",
    "encode_signs",
    "decode_signs",
    "stream_words",
]


def stream_words(bits: int) -> int:
    """Number of int64 words holding a stream of ``bits`` bits."""
    return math.ceil(bits / WORD_BITS)


def pack_stream(bits: torch.Tensor) -> torch.Tensor:
    """Pack a flat bool stream into int64 words (LSB first; empty stream -> 0 words)."""
    flat = bits.reshape(-1).bool()
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    return pack_bits(flat[None, :])[0]


def unpack_stream(words: torch.Tensor, length: int, what: str) -> torch.Tensor:
    """Inverse of :func:`pack_stream`: the first ``length`` bits as a bool tensor.

    Raises:
        FormatError: ``words`` is not int64 ``[ceil(length / 64)]``.
    """
    expected = stream_words(length)
    if words.dtype != torch.int64 or tuple(words.shape) != (expected,):
        raise FormatError(
            f"{what}: expected int64 [{expected}] words for {length} bits, "
            f"got {words.dtype} {list(words.shape)}"
        )
    if length == 0:
        return torch.zeros(0, dtype=torch.bool)
    return unpack_bits(words[None, :], length)[0]


def encode_levels(levels: torch.Tensor, n_levels: int) -> torch.Tensor:
    """Nested-mask (unary) code of unit levels ``0..n_levels-1`` as a bool stream.

    Example:
        >>> encode_levels(torch.tensor([0, 2, 1, 0]), 3).int().tolist()  # [l>=1] on all, [l>=2] on l>=1
        [0, 1, 1, 0, 1, 0]
    """
    levels = levels.reshape(-1)
    parts = [levels[levels >= k - 1] >= k for k in range(1, n_levels)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def decode_levels(stream: torch.Tensor, units: int, n_levels: int, what: str) -> torch.Tensor:
    """Inverse of :func:`encode_levels`: int64 levels ``[units]``.

    Raises:
        FormatError: the stream is shorter or longer than the code it claims to hold.
    """
    levels = torch.zeros(units, dtype=torch.int64)
    pos = 0
    for k in range(1, n_levels):
        open_ = levels == k - 1  # units whose level is still undecided (>= k - 1)
        count = int(open_.sum())
        if pos + count > stream.numel():
            raise FormatError(f"{what}: bit map stream is too short ({stream.numel()} bits)")
        levels[open_] += stream[pos: pos + count].to(torch.int64)
        pos += count
    if pos != stream.numel():
        raise FormatError(f"{what}: bit map stream has {stream.numel()} bits, the code uses {pos}")
    return levels


def unit_levels(bitmap: torch.Tensor, bits: tuple[int, ...], block: int) -> torch.Tensor:
    """Levels (indices into ``bits``) of the map units: entries, or blocks along each row.

    Units follow :func:`hbnn.quant.bitmap.block_view_shape`: ``O`` rows of ``K`` inputs
    (``weight.reshape(O, -1)``), each cut into runs of ``block``; a unit's level is its
    first entry's (every entry of a block shares it, which is checked). The inverse is
    :func:`hbnn.quant.bitmap.expand_blocks`.
    """
    lut = torch.full((max(bits) + 1,), -1, dtype=torch.int64)
    lut[list(bits)] = torch.arange(len(bits))
    levels = lut[bitmap.to(torch.int64)]
    if bool((levels < 0).any()):
        raise ValueError(f"bit map holds bitwidths outside the mix {list(bits)}")
    if block == 1:
        return levels.reshape(-1)
    rows = block_view_shape(bitmap.shape, block)[0]
    units = levels.reshape(rows, -1)[:, ::block].reshape(-1)
    if not torch.equal(expand_blocks(units, tuple(bitmap.shape), block), levels.reshape(bitmap.shape)):
        raise ValueError(f"bit map is not constant over blocks of {block}")
    return units


def encode_signs(signs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """One bool stream: plane ``i``'s signs at its active entries, planes in order."""
    return torch.cat([signs[i][masks[i]] for i in range(signs.shape[0])])


def decode_signs(stream: torch.Tensor, masks: torch.Tensor, what: str) -> torch.Tensor:
    """Inverse of :func:`encode_signs`: bool planes of ``masks``'s shape (0 where inactive).

    Raises:
        FormatError: the stream length differs from the number of active entries.
    """
    total = int(masks.sum())
    if stream.numel() != total:
        raise FormatError(f"{what}: sign stream has {stream.numel()} bits, the bit map needs {total}")
    signs = torch.zeros_like(masks)
    signs[masks] = stream  # boolean indexing walks planes, then flatten order: encode's order
    return signs
