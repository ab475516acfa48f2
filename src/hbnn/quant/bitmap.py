"""Algorithm 1: choosing each entry's bitwidth (the bit map).

All entries are ranked once by a heuristic key (ascending = fewer bits); the ranking is
cut into consecutive slices of ``round(p_b * N)`` entries, smallest bitwidth first, with
rounding leftovers going to the largest bitwidth (:meth:`BitMix.counts`).

Keys (:mod:`hbnn.quant.keys`, ``a = |x|``): middle-out ``|a - mean(a)|``, top-down ``-a``,
bottom-up ``a``; ``random`` ranks by a seeded permutation.

The ranking is the *stable* ascending order of the key (ties broken by flat index), but
it is never materialised: each cut only needs the k-th smallest key, then one comparison
pass, with a tie fix-up only when the boundary value repeats. Float32 CPU tensors do all
of it in one C call (:mod:`hbnn.quant.select_c`); otherwise a sample-bracketed
``numpy.partition`` (:mod:`hbnn.quant.select`) on CPU and one sort on accelerators. Every
path equals ``argsort(key, stable=True)`` cut into slices exactly (:func:`sort_bitmap`).
"""

from __future__ import annotations

import numpy as np
import torch

from hbnn.quant import select_c
from hbnn.quant.checks import check_float_tensor, check_heuristic
from hbnn.quant.keys import heuristic_key, mean_magnitude
from hbnn.quant.mix import BitMix
from hbnn.quant.select import SAMPLE_SIZE, first_k_mask, kth_smallest, sample_index, sample_rank

__all__ = [
    "make_bitmap",
    "heuristic_key",
    "select_slices",
    "keyed_bitmap",
    "threshold_bitmap",
    "sampled_bitmap",
    "sort_bitmap",
    "map_from_thresholds",
    "sampled_thresholds",
    "block_view_shape",
    "block_reduce",
    "expand_blocks",
    "random_ranks",
    "thresholds_from_sample",
    "unchecked_bitmap",
    "average_bits",
    "DEFAULT_SEED",
]

DEFAULT_SEED = 0


def _first_k_torch(key: torch.Tensor, k: int, v) -> torch.Tensor:
    """Torch version of :func:`hbnn.quant.select.first_k_mask` for accelerator tensors."""
    below_or_at = key <= v
    if int(torch.count_nonzero(below_or_at)) == k:
        return below_or_at
    below = key < v
    ties = key == v
    need = k - int(torch.count_nonzero(below))
    return below | (ties & (torch.cumsum(ties, 0, dtype=torch.int64) <= need))


def _walk_cuts(out, n: int, mix: BitMix, cuts: list[int], kth, first_k) -> list[float]:
    """Step ``out`` (all ``bits[-1]``) down through the cuts; returns each cut's key value.

    The first ``c_j`` entries of the ranking step down by ``bits[j+1] - bits[j]`` for every
    cut ``j`` (the masks are nested), so each entry ends at its slice's bitwidth.
    ``kth(c)`` gives the c-th smallest key, ``first_k(c, v)`` the int8 0/1 mask of the first c.
    """
    thresholds = []
    for j, c in enumerate(cuts):
        step = mix.bits[j + 1] - mix.bits[j]
        if c == 0:
            thresholds.append(float("-inf"))
            continue
        if c == n:
            thresholds.append(float("inf"))
            out -= step
            continue
        v = kth(c)
        thresholds.append(float(v))
        first = first_k(c, v)
        out -= first if step == 1 else first * step
    return thresholds


def _select_cpu(key: np.ndarray, mix: BitMix, cuts: list[int]) -> tuple[np.ndarray, list]:
    """Selection by exact k-th values (:mod:`hbnn.quant.select`), robust to heavy ties."""
    out = np.full(key.size, mix.bits[-1], dtype=np.int8)
    thresholds = _walk_cuts(
        out, key.size, mix, cuts, lambda c: kth_smallest(key, c), lambda c, v: first_k_mask(key, c, v).view(np.int8)
    )
    return out, thresholds


def _select_torch(key: torch.Tensor, mix: BitMix, cuts: list[int]) -> tuple[torch.Tensor, list]:
    """Selection with one sort, for accelerators (kthvalue is ~20x slower than sort on CUDA)."""
    n = key.numel()
    values = torch.sort(key).values if any(0 < c < n for c in cuts) else None
    out = torch.full(key.shape, mix.bits[-1], dtype=torch.int8, device=key.device)
    thresholds = _walk_cuts(
        out, n, mix, cuts, lambda c: values[c - 1].item(), lambda c, v: _first_k_torch(key, c, v).to(torch.int8)
    )
    return out, thresholds


def sort_bitmap(key: torch.Tensor, mix: BitMix) -> torch.Tensor:
    """Algorithm 1 as the paper writes it: a full stable sort of the key, cut into slices.

    The slow ground truth that :func:`select_slices` must equal exactly (tests, benchmarks).
    """
    flat = key.reshape(-1)
    order = torch.argsort(flat, stable=True)
    out = torch.empty(flat.numel(), dtype=torch.int8, device=flat.device)
    pos = 0
    for bits, count in zip(mix.bits, mix.counts(flat.numel())):
        out[order[pos : pos + count]] = bits
        pos += count
    return out.reshape(key.shape)


def select_slices(key: torch.Tensor, mix: BitMix) -> tuple[torch.Tensor, list[float]]:
    """Cut the stable ascending ranking of a flat ``key`` into the mix's slices.

    Returns:
        ``(bitmap, thresholds)``: an int8 tensor of the key's shape, and for each cut the
        key value at its boundary (entries with key above ``thresholds[j]`` get more than
        ``mix.bits[j]`` bits; used as running estimates for activations).
    """
    cuts = mix.cuts(key.numel())
    if key.device.type == "cpu":
        out, thresholds = _select_cpu(key.numpy(), mix, cuts)
        return torch.from_numpy(out), thresholds
    return _select_torch(key, mix, cuts)


def keyed_bitmap(x: torch.Tensor, mix: BitMix, heuristic: str,
                 mean_abs: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float]]:
    """Algorithm 1 on ``x`` for a keyed heuristic: ``(int8 map of x's shape, cut thresholds)``.

    Float32 CPU tensors take the fused C passes (:mod:`hbnn.quant.select_c`); everything
    else (and a missed sample bracket) materialises the key and uses :func:`select_slices`.
    Both give exactly :func:`sort_bitmap`'s map.
    """
    if select_c.available(x, heuristic):
        got = select_c.select_map(x, mix, heuristic, mean_abs)
        if got is not None:
            return got
    bitmap, thresholds = select_slices(heuristic_key(x, heuristic, mean_abs).reshape(-1), mix)
    return bitmap.reshape(x.shape), thresholds


def threshold_bitmap(x: torch.Tensor, mix: BitMix, heuristic: str, thresholds: list[float],
                     mean_abs: torch.Tensor | None = None) -> torch.Tensor:
    """The elementwise bit map of ``x`` at given cut thresholds (inference, sampled selection).

    ``M = b_0 + sum_j (b_{j+1} - b_j) [key(x) > t_j]`` with ``key`` the heuristic's key
    (:func:`heuristic_key`, middle-out measured from ``mean_abs``): :func:`map_from_thresholds`
    on the key, or the same formula fused in C for float32 CPU tensors
    (:func:`hbnn.quant.select_c.threshold_map`, bit-identical). A key equal to ``t_j`` is
    not above it. Every caller (the activation quantizer at inference, the packed engine,
    sampled selection) goes through here.
    """
    if select_c.available(x, heuristic):
        return select_c.threshold_map(x, mix, heuristic, thresholds, mean_abs)
    return map_from_thresholds(heuristic_key(x, heuristic, mean_abs), mix, thresholds)


def map_from_thresholds(key: torch.Tensor, mix: BitMix, thresholds: list[float]) -> torch.Tensor:
    """The threshold map in torch: ``M = b_0 + sum_j (b_{j+1} - b_j) [key > t_j]`` as int8.

    Args:
        key: the heuristic key of every entry (any shape).
        mix: the bit mix ``b_0 < ... < b_{K-1}``.
        thresholds: ``K - 1`` cut values ``t_j`` (``-inf``/``inf`` for empty/full slices);
            ``key == t_j`` counts as not above.
    """
    out = torch.full(key.shape, mix.bits[0], dtype=torch.int8, device=key.device)
    for j, t in enumerate(thresholds):
        above = (key > t).view(torch.int8)  # bool -> int8 without a copy
        step = mix.bits[j + 1] - mix.bits[j]
        out += above if step == 1 else above * step
    return out


def sampled_thresholds(x: torch.Tensor, mix: BitMix, heuristic: str,
                       mean_abs: torch.Tensor | None = None) -> list[float]:
    """Cut thresholds estimated from the keys of a fixed pseudo-random sample of ``x``.

    Threshold ``j`` is the sample's key at rank ``c_j / N`` of the sample, so about
    ``c_j`` entries have a key at or below it (sampling error ~``sqrt(p(1-p)/16384)``).
    Only the sample's keys are computed. Small tensors (<= 16384 entries) are selected
    exactly.
    """
    flat = x.reshape(-1)
    n = flat.numel()
    if n > SAMPLE_SIZE:
        flat = flat[torch.from_numpy(sample_index(n)).to(flat.device)]
    if heuristic == "middle_out" and mean_abs is None:
        mean_abs = mean_magnitude(x)
    return thresholds_from_sample(heuristic_key(flat, heuristic, mean_abs).cpu().numpy(), n, mix)


def thresholds_from_sample(sample: np.ndarray, n: int, mix: BitMix) -> list[float]:
    """Cut thresholds of ``n`` keys from the keys of their sample (:func:`sample_index` positions,
    or all ``n`` keys when ``n <= 16384``): cut ``c_j`` is the sample's key at rank
    :func:`hbnn.quant.select.sample_rank` ``(c_j, n)``; ``-inf``/``inf`` for empty/full slices."""
    thresholds = []
    for c in mix.cuts(n):
        if c == 0:
            thresholds.append(float("-inf"))
        elif c == n:
            thresholds.append(float("inf"))
        else:
            thresholds.append(kth_smallest(sample, sample_rank(c, n)).item())
    return thresholds


def sampled_bitmap(x: torch.Tensor, mix: BitMix, heuristic: str,
                   mean_abs: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float]]:
    """The map of ``key > t_j`` for the :func:`sampled_thresholds` of ``x``, and those thresholds.

    Fused in one C call for float32 CPU tensors (:func:`hbnn.quant.select_c.sampled_map`).
    """
    if select_c.available(x, heuristic):
        got = select_c.sampled_map(x, mix, heuristic, mean_abs)
        if got is not None:
            return got
    thresholds = sampled_thresholds(x, mix, heuristic, mean_abs)
    return threshold_bitmap(x, mix, heuristic, thresholds, mean_abs), thresholds


def average_bits(bitmap: torch.Tensor | None, mix: BitMix) -> float:
    """The realized average bitwidth ``mean_j M_j`` of a map (``mix.average`` when ``bitmap`` is None)."""
    return mix.average if bitmap is None else float(bitmap.float().mean())


def random_ranks(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A seeded permutation of ``0..n-1`` (the ``random`` heuristic's ranking key)."""
    if generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    return torch.randperm(n, generator=generator).to(device)


def block_view_shape(shape: torch.Size, block: int) -> tuple[int, int, int]:
    """``(rows, blocks_per_row, row_length)`` for block granularity along the input dimension.

    A tensor of shape ``[O, ...]`` is viewed as ``O`` rows of ``K = prod(...)`` entries (the
    input dimension of each output row, in ``weight.reshape(O, -1)`` order); each row is cut
    into ``ceil(K / block)`` runs of ``block`` consecutive entries (the last may be shorter).
    """
    rows = shape[0] if len(shape) > 1 else 1
    k = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
    return rows, -(-k // block), k


def block_reduce(values: torch.Tensor, shape, block: int, mean: bool = True) -> torch.Tensor:
    """Mean (or sum) of ``values`` over each block of :func:`block_view_shape` ``(shape, block)``.

    ``values`` holds ``prod(shape)`` entries in row order; the result is ``[rows * blocks]``,
    row-major (the last block of a row averages over its ``k - (blocks - 1) * block`` entries).
    """
    rows, nb, k = block_view_shape(shape, block)
    flat = values.reshape(rows, k)
    pad = nb * block - k
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    sums = flat.reshape(rows, nb, block).sum(-1)
    if not mean:
        return sums.reshape(-1)
    sizes = torch.full((nb,), float(block), dtype=sums.dtype, device=sums.device)
    sizes[-1] = block - pad
    return (sums / sizes).reshape(-1)


def expand_blocks(values: torch.Tensor, shape: tuple[int, ...], block: int) -> torch.Tensor:
    """Per-block values ``[rows * blocks_per_row]`` -> per-entry values of ``shape``.

    Every entry of a block (:func:`block_view_shape`) takes its block's value; ``block = 1``
    is a reshape.
    """
    if block == 1:
        return values.reshape(shape)
    rows, nb, k = block_view_shape(shape, block)
    return values.reshape(rows, nb).repeat_interleave(block, dim=1)[:, :k].reshape(shape)


def make_bitmap(
    x: torch.Tensor,
    mix: BitMix | int | float | str | dict,
    heuristic: str = "middle_out",
    generator: torch.Generator | None = None,
    block: int = 1,
) -> torch.Tensor:
    """Algorithm 1: the per-entry bitwidths of ``x`` for a target mix.

    Args:
        x: a non-empty, finite floating-point tensor.
        mix: a :class:`BitMix` or anything :meth:`BitMix.coerce` accepts (``1.4`` = 70/20/10).
        heuristic: ``middle_out`` (paper default), ``top_down``, ``bottom_up`` or ``random``.
        generator: seeds the ``random`` heuristic's permutation (default: a fixed seed, so the
            ranking is the same for the same tensor size).
        block: ``1`` (per parameter, the paper) or ``k`` > 1: runs of ``k`` consecutive entries
            along the input dimension of each output row share one bitwidth; blocks are ranked
            by their mean key and the mix's counts apply to blocks.

    Returns:
        An ``int8`` tensor of ``x``'s shape. Exactly ``mix.counts(N)[i]`` entries (blocks, when
        ``block > 1``) get ``mix.bits[i]`` bits.

    Example:
        >>> make_bitmap(torch.tensor([0.1, 1.0, 2.0, 5.0]), {1: 0.5, 2: 0.5}, "bottom_up")
        tensor([1, 1, 2, 2], dtype=torch.int8)
    """
    check_float_tensor(x)
    mix = BitMix.coerce(mix)
    check_heuristic(heuristic)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block: expected an integer >= 1, got {block!r}")
    with torch.no_grad():
        return unchecked_bitmap(x.detach(), mix, heuristic, generator, block)


def unchecked_bitmap(x: torch.Tensor, mix: BitMix, heuristic: str, generator: torch.Generator | None,
                     block: int) -> torch.Tensor:
    """:func:`make_bitmap` without argument checks or autograd handling (the quantizer modules' call)."""
    if mix.is_homogeneous:
        return torch.full(x.shape, mix.bits[0], dtype=torch.int8, device=x.device)
    if block > 1:
        n_units = int(np.prod(block_view_shape(x.shape, block)[:2]))
        if heuristic == "random":
            key = random_ranks(n_units, generator, x.device)
        else:
            key = block_reduce(heuristic_key(x, heuristic), x.shape, block)
        block_map, _ = select_slices(key, mix)
        return expand_blocks(block_map, x.shape, block)
    if heuristic == "random":
        bitmap, _ = select_slices(random_ranks(x.numel(), generator, x.device), mix)
        return bitmap.reshape(x.shape)
    return keyed_bitmap(x, mix, heuristic)[0]
