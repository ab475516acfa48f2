"""Exact k-th values and stable first-k masks on large, heavily tied arrays."""

import numpy as np
import pytest
import torch

from hbnn.quant import BitMix, make_bitmap
from hbnn.quant.bitmap import heuristic_key, sort_bitmap
from hbnn.quant.select import first_k_mask, kth_smallest


def _arrays():
    rng = np.random.default_rng(0)
    n = 200_003  # above the direct-partition size, so the sampled bracket is used
    clean = rng.standard_normal(n).astype(np.float32)
    clipped = np.clip(clean * 1.5, -1, 1)  # ~half the entries tie at +-1
    few = rng.integers(0, 4, n).astype(np.float32)  # four values only
    const = np.zeros(n, dtype=np.float32)
    return {"clean": clean, "clipped": np.abs(clipped), "few": few, "const": const}


@pytest.mark.parametrize("name", ["clean", "clipped", "few", "const"])
@pytest.mark.parametrize("q", [1e-6, 0.1, 0.5, 0.7, 0.9, 1.0])
def test_kth_smallest_exact(name, q):
    key = _arrays()[name]
    k = max(1, int(q * key.size))
    assert kth_smallest(key, k) == np.sort(key)[k - 1]


@pytest.mark.parametrize("name", ["clean", "clipped", "few", "const"])
@pytest.mark.parametrize("q", [0.1, 0.7, 0.9])
def test_first_k_mask_is_stable_order_prefix(name, q):
    key = _arrays()[name]
    k = int(q * key.size)
    mask = first_k_mask(key, k, kth_smallest(key, k))
    expected = np.zeros(key.size, dtype=bool)
    expected[np.argsort(key, kind="stable")[:k]] = True
    assert np.array_equal(mask, expected)


def test_kth_smallest_rejects_bad_rank():
    with pytest.raises(ValueError, match="k: expected 1..3"):
        kth_smallest(np.zeros(3), 4)


@pytest.mark.parametrize("heuristic", ["middle_out", "top_down", "bottom_up"])
def test_make_bitmap_on_clipped_activations_matches_sort(heuristic):
    x = torch.nn.functional.hardtanh(torch.randn(64, 8, 16, 16, generator=torch.Generator().manual_seed(2)) * 1.5)
    mix = BitMix.from_average(1.4)
    ref = sort_bitmap(heuristic_key(x, heuristic).reshape(-1), mix)
    assert torch.equal(make_bitmap(x, mix, heuristic).reshape(-1), ref)


def test_bracket_miss_falls_back_to_exact(monkeypatch):
    import hbnn.quant.select as sel

    key = np.abs(np.clip(np.random.default_rng(1).standard_normal(100_000) * 1.5, -1, 1)).astype(np.float32)
    order = np.argsort(key, kind="stable")
    # A misleading "sample": only the smallest keys, so the bracket cannot contain rank 0.9 n.
    monkeypatch.setattr(sel, "sample_index", lambda n: order[: sel.SAMPLE_SIZE])
    k = 90_000
    assert sel.kth_smallest(key, k) == np.sort(key)[k - 1]
    assert sel._bracketed(key, k, key[order[0]], key[order[10]]) == np.sort(key)[k - 1]
