"""Exact order statistics on CPU without sorting, robust to heavy ties.

Algorithm 1 needs, for each cut ``c``, the first ``c`` entries of the stable ascending
order of a key. Two steps:

1. ``kth_smallest(key, c)``: the c-th smallest value. ``numpy.partition`` alone is fast
   on distinct floats but degrades ~10x when a value repeats massively (clipped
   activations: half of a hardtanh output sits exactly at +-1). So, Floyd-Rivest style:
   take the order statistics of a fixed pseudo-random sample just below and above the
   target rank; if the sample shows no heavy ties there, partition directly; otherwise
   count the keys below, at and above the bracket ends (an end that holds the rank is
   the answer) and partition only the keys strictly inside. If the bracket misses
   (probability ~1e-9), fall back to a full partition. The result is always exact.
2. ``first_k_mask(key, c, v)``: ``key < v`` plus the lowest-index ties ``key == v``, found
   by counting ties per chunk instead of a cumulative sum over the whole tensor.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["kth_smallest", "first_k_mask", "order_stats", "sample_rank", "sample_index", "SAMPLE_SIZE", "EXACT_BELOW"]

#: Entries in the fixed pseudo-random sample that brackets a rank (:func:`sample_index`).
SAMPLE_SIZE = 16384
#: Tensors of at most this many entries skip the sample: partition (or select) exactly.
EXACT_BELOW = 1 << 16
_CHUNK = 4096


@functools.lru_cache(maxsize=32)
def sample_index(n: int) -> np.ndarray:
    """A fixed pseudo-random sample of positions (seeded by ``n`` only, so runs repeat).

    Sorted, so gathering the sample walks memory forwards (prefetch-friendly); the order of
    a sample does not matter to its order statistics.
    """
    return np.sort(np.random.default_rng(n).integers(0, n, SAMPLE_SIZE))


def sample_rank(c: int, n: int) -> int:
    """The 1-based rank in the sample (:func:`sample_index`, or all ``n`` entries when
    ``n <= SAMPLE_SIZE``) that estimates rank ``c`` of ``n``: ``round(c / n * m)`` in ``1..m``."""
    m = SAMPLE_SIZE if n > SAMPLE_SIZE else n
    return max(1, min(m, round(c / n * m)))


def order_stats(a: np.ndarray, ranks) -> np.ndarray:
    """The values of ``a`` at 0-based sorted-order positions ``ranks`` (``a`` is reordered).

    One single-k partition per rank on the part above the previous one: numpy's multi-k
    ``partition`` is ~10x slower than this on 16k entries.
    """
    out = {}
    start = 0
    for r in sorted(set(ranks)):
        a[start:].partition(r - start)
        out[r], start = a[r], r
    return np.array([out[r] for r in ranks], dtype=a.dtype)


def kth_smallest(key: np.ndarray, k: int):
    """The ``k``-th smallest value of a flat array (1-based ``k``), exactly.

    Example:
        >>> float(kth_smallest(np.array([3.0, 1.0, 2.0, 1.0]), 3))
        2.0
    """
    n = key.size
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1..{n}, got {k}")
    if n <= EXACT_BELOW:
        return np.partition(key, k - 1)[k - 1]
    sample = key[sample_index(n)]
    delta = 4 * math.sqrt(SAMPLE_SIZE)  # ~4 standard deviations of the sample rank
    lo_r = max(0, int(k / n * SAMPLE_SIZE - delta))
    hi_r = min(SAMPLE_SIZE - 1, int(k / n * SAMPLE_SIZE + delta))
    lo, hi = order_stats(sample, [lo_r, hi_r])  # sample is a copy (fancy indexing)
    tied = max(np.count_nonzero(sample == lo), np.count_nonzero(sample == hi))
    if tied < SAMPLE_SIZE // 64:  # (nearly) distinct around the rank: introselect is fastest
        return np.partition(key, k - 1)[k - 1]
    return _bracketed(key, k, lo, hi)


def _bracketed(key: np.ndarray, k: int, lo, hi):
    """k-th value given a bracket ``lo <= answer <= hi`` that may sit on massive ties."""
    at_lo = np.count_nonzero(key <= lo)
    below_hi = np.count_nonzero(key < hi)
    if not np.count_nonzero(key < lo) < k <= np.count_nonzero(key <= hi):
        return np.partition(key, k - 1)[k - 1]  # the bracket missed the rank (~1e-9)
    if k <= at_lo:
        return lo
    if k > below_hi:
        return hi
    inside = key[(key > lo) & (key < hi)]  # ties at lo and hi excluded
    return np.partition(inside, k - 1 - at_lo)[k - 1 - at_lo]


def first_k_mask(key: np.ndarray, k: int, v) -> np.ndarray:
    """Mask of the first ``k`` entries of the stable ascending order, given its k-th value ``v``."""
    at_or_below = key <= v
    if np.count_nonzero(at_or_below) == k:
        return at_or_below
    # The boundary value repeats: keep the lowest-index ties only (stable order).
    mask = key < v
    ties = key == v
    need = k - np.count_nonzero(mask)
    pad = (-ties.size) % _CHUNK
    per_chunk = np.count_nonzero(np.pad(ties, (0, pad)).reshape(-1, _CHUNK), axis=1)
    chunk = int(np.searchsorted(np.cumsum(per_chunk), need))  # chunk holding the need-th tie
    start = chunk * _CHUNK
    before = int(per_chunk[:chunk].sum())
    local = np.flatnonzero(ties[start : start + _CHUNK])
    end = start + int(local[need - before - 1]) + 1  # one past the need-th tie
    mask[:end] |= ties[:end]
    return mask
