"""The C selection path (hbnn.quant.select_c) against the sort-based ground truth, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hbnn.kernels import available_backends, cpu_features, selection
from hbnn.quant import BitMix, make_bitmap
from hbnn.quant import select_c
from hbnn.quant.bitmap import (
    keyed_bitmap,
    map_from_thresholds,
    sampled_bitmap,
    sampled_thresholds,
    select_slices,
    sort_bitmap,
    threshold_bitmap,
)
from hbnn.quant.keys import heuristic_key, mean_magnitude

HEURISTICS = ["middle_out", "bottom_up", "top_down"]
MIXES = [BitMix.from_average(1.4), BitMix({1: 0.8, 3: 0.2}), BitMix({1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25}),
         BitMix({1: 0.5, 2: 0.5}), BitMix.from_average(1.9)]


@pytest.fixture(scope="module")
def variants() -> list[str]:
    if "c" not in available_backends():
        pytest.skip("C kernels unavailable here (no compiler?)")
    return cpu_features()["variants"]


def _tensor(kind: str, n: int, seed: int) -> torch.Tensor:
    """Distinct floats, clipped activations (heavy ties at +-1), few values, or all equal."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    if kind == "clipped":
        return torch.nn.functional.hardtanh(x * 1.5)
    if kind == "few":
        return (x * 2).round()
    if kind == "const":
        return torch.full((n,), 0.5)
    return x


# Sizes below and above the exact/sampled switch, not multiples of any vector width.
SIZES = [7, 1000, 65_536, 65_537, 200_003]


@pytest.mark.parametrize("kind", ["clean", "clipped", "few", "const"])
@pytest.mark.parametrize("n", SIZES)
def test_exact_selection_equals_sort_for_every_variant(variants, kind, n):
    x = _tensor(kind, n, seed=n)
    for heuristic in HEURISTICS:
        key = heuristic_key(x, heuristic)
        for mix in MIXES:
            ref = sort_bitmap(key, mix)
            _, ref_thresholds = select_slices(key, mix)
            for variant in variants:
                got = select_c.select_map(x, mix, heuristic, variant=variant)
                if got is None:  # only tiny tensors where a slice is empty
                    assert min(mix.counts(n)) == 0
                    continue
                assert torch.equal(got[0], ref), (kind, n, heuristic, str(mix), variant)
                assert got[1] == ref_thresholds


def test_exact_selection_keeps_shape_and_dtype(variants):
    x = torch.randn(4, 3, 5, 7)
    bitmap, thresholds = select_c.select_map(x, BitMix.from_average(1.4), "middle_out")
    assert bitmap.shape == x.shape and bitmap.dtype == torch.int8 and len(thresholds) == 2
    assert torch.equal(bitmap, make_bitmap(x, 1.4))


@pytest.mark.parametrize("n", [100, 16_384, 16_385, 200_003])
@pytest.mark.parametrize("kind", ["clean", "clipped", "few"])
def test_sampled_map_equals_torch_path(variants, n, kind):
    x = _tensor(kind, n, seed=7)
    for heuristic in HEURISTICS:
        mu = mean_magnitude(x)
        for mix in MIXES[:3]:
            thresholds = sampled_thresholds(x, mix, heuristic, mu)
            ref = map_from_thresholds(heuristic_key(x, heuristic, mu), mix, thresholds)
            for variant in variants:
                got = select_c.sampled_map(x, mix, heuristic, mu, variant=variant)
                assert torch.equal(got[0], ref) and got[1] == thresholds


def test_threshold_map_equals_torch_path_including_infinite_thresholds(variants):
    x = _tensor("clipped", 10_001, seed=3)
    mix = BitMix({1: 0.3, 2: 0.3, 3: 0.2, 4: 0.2})
    for heuristic in HEURISTICS:
        key = heuristic_key(x, heuristic, torch.tensor(0.4))
        for t in ([-0.5, 0.1, 0.6], [float("-inf"), 0.0, float("inf")], [0.6, 0.6, 0.6], [-1e30, 1e30, 1e30]):
            ref = map_from_thresholds(key, mix, t)
            for variant in variants:
                assert torch.equal(select_c.threshold_map(x, mix, heuristic, t, torch.tensor(0.4), variant), ref)


def test_mean_abs_is_the_same_bits_on_every_variant_and_accurate(variants):
    x = torch.randn(1_000_003, generator=torch.Generator().manual_seed(5)) * 3
    values = {float(select_c.mean_abs(x, v)) for v in variants}
    assert len(values) == 1
    exact = np.abs(x.numpy().astype(np.float64)).sum() / x.numel()
    assert values.pop() == float(np.float32(exact))  # float64 sum, rounded once
    assert float(mean_magnitude(x)) == float(np.float32(exact))


def test_missed_bracket_falls_back_to_exact_numpy_path(variants, monkeypatch):
    x = _tensor("clipped", 100_000, seed=11)
    mix = BitMix.from_average(1.4)
    key = heuristic_key(x, "middle_out")
    order = np.argsort(key.numpy(), kind="stable")
    # A misleading sample (only the smallest keys): no bracket can contain rank 0.7 N.
    monkeypatch.setattr(select_c, "sample_index", lambda n: np.sort(order[: select_c.SAMPLE_SIZE]))
    select_c._plan.cache_clear()
    try:
        assert select_c.select_map(x, mix, "middle_out") is None
        bitmap, _ = keyed_bitmap(x, mix, "middle_out")
        assert torch.equal(bitmap, sort_bitmap(key, mix))
    finally:
        select_c._plan.cache_clear()


def test_bracket_overflow_falls_back(variants, monkeypatch):
    x = _tensor("clean", 100_000, seed=12)
    mix = BitMix.from_average(1.4)
    plan = select_c._plan(x.numel(), mix)
    tiny = select_c._Plan(plan.cuts, plan.idx, plan.lo_r, plan.hi_r, 3, plan.steps)  # room for 3 keys only
    monkeypatch.setattr(select_c, "_plan", lambda n, m: tiny)
    assert select_c.select_map(x, mix, "middle_out") is None
    assert torch.equal(keyed_bitmap(x, mix, "middle_out")[0], sort_bitmap(heuristic_key(x, "middle_out"), mix))


def test_without_c_kernels_the_torch_path_gives_the_same_maps(variants, monkeypatch):
    x = _tensor("clipped", 70_001, seed=13)
    mix = BitMix.from_average(1.4)
    mu = mean_magnitude(x)
    with_c = keyed_bitmap(x, mix, "middle_out", mu), sampled_bitmap(x, mix, "middle_out", mu)
    with_c_thr = threshold_bitmap(x, mix, "middle_out", [0.2, 0.5], mu)
    monkeypatch.setenv("HBNN_KERNELS", "off")
    assert not select_c.available(x)
    without = keyed_bitmap(x, mix, "middle_out", mu), sampled_bitmap(x, mix, "middle_out", mu)
    for (a, ta), (b, tb) in zip(with_c, without):
        assert torch.equal(a, b) and ta == tb
    assert torch.equal(with_c_thr, threshold_bitmap(x, mix, "middle_out", [0.2, 0.5], mu))


def test_c_path_applies_only_to_float32_cpu_keyed_heuristics(variants):
    assert select_c.available(torch.zeros(3))
    assert not select_c.available(torch.zeros(3, dtype=torch.float64))
    assert not select_c.available(torch.zeros(3), "random")
    x64 = torch.randn(50_000, dtype=torch.float64)
    assert torch.equal(make_bitmap(x64, 1.4), sort_bitmap(heuristic_key(x64, "middle_out"), BitMix.from_average(1.4)))


def test_c_entry_points_reject_bad_arguments(variants):
    x = torch.randn(100)
    steps = np.array([1], dtype=np.int8)
    with pytest.raises(RuntimeError, match="hbnn_select_exact failed with code -1"):
        selection.select_exact(x, "middle_out", 0.5, np.array([100]), None, np.array([99]), np.array([99]), 0, steps,
                               2)  # a cut must be < N
    with pytest.raises(RuntimeError, match="hbnn_select_sampled failed with code -1"):
        selection.select_sampled(x, "bottom_up", 0.5, None, np.array([100]), steps, 2)  # rank 100 of 100 keys
    with pytest.raises(ValueError, match="heuristic: expected one of"):
        selection.select_map(x, "random", 0.5, np.array([0.5]), steps, 2)
    with pytest.raises(TypeError, match="float32 CPU tensor"):
        selection.select_mean_abs(x.double())


@pytest.mark.parametrize("n", [1000, 200_000])
def test_cut_exactly_at_the_end_of_a_tie_run(variants, n):
    # 70 % of the entries share the smallest magnitude: bottom-up's first cut (70 %) ends
    # exactly where the tie run ends, the 90 % cut inside a second run.
    g = torch.Generator().manual_seed(n)
    x = torch.cat([torch.full((7 * n // 10,), 0.25), torch.full((n // 10,), 0.5), 1 + torch.rand(n // 5, generator=g)])
    x = x[torch.randperm(n, generator=g)] * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    mix = BitMix.from_average(1.4)
    for heuristic in HEURISTICS:
        ref = sort_bitmap(heuristic_key(x, heuristic), mix)
        for variant in variants:
            assert torch.equal(select_c.select_map(x, mix, heuristic, variant=variant)[0], ref), (heuristic, variant)


@pytest.mark.parametrize("pattern", ["sorted", "reversed", "organ_pipe", "sawtooth"])
def test_quickselect_on_adversarial_orders(variants, pattern):
    n = 50_000  # exact brackets: quickselect runs on every key
    ramp = torch.arange(n, dtype=torch.float32) / n
    x = {"sorted": ramp, "reversed": ramp.flip(0),
         "organ_pipe": torch.cat([ramp[: n // 2], ramp[: n // 2].flip(0)]),
         "sawtooth": (torch.arange(n) % 97).float()}[pattern]
    for heuristic in HEURISTICS:
        for mix in MIXES:
            ref = sort_bitmap(heuristic_key(x, heuristic), mix)
            for variant in variants:
                assert torch.equal(select_c.select_map(x, mix, heuristic, variant=variant)[0], ref)
