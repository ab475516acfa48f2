"""Algorithm 1: exact counts and orderings, checked against a stable full sort."""

import pytest
import torch

from hbnn.quant import HEURISTICS, BitMix, make_bitmap
from hbnn.quant.bitmap import _select_torch, block_view_shape, heuristic_key, select_slices, sort_bitmap


def reference_bitmap(key: torch.Tensor, mix: BitMix) -> torch.Tensor:
    """Algorithm 1 by a stable sort: one ranking cut into consecutive slices."""
    return sort_bitmap(key, mix)


MIXES = [1.1, 1.2, 1.4, 1.9, "80/0/20", "60/40/0", {1: 0.5, 4: 0.5}, {2: 0.3, 3: 0.3, 5: 0.4}]


@pytest.mark.parametrize("heuristic", ["middle_out", "top_down", "bottom_up"])
@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("n", [1, 2, 10, 257, 5000])
def test_equals_stable_sort_reference(heuristic, mix, n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    mix = BitMix.coerce(mix)
    got = make_bitmap(x, mix, heuristic)
    assert got.dtype == torch.int8 and got.shape == x.shape
    assert torch.equal(got, reference_bitmap(heuristic_key(x, heuristic), mix))


@pytest.mark.parametrize("heuristic", ["middle_out", "top_down", "bottom_up"])
@pytest.mark.parametrize("mix", MIXES)
def test_ties_broken_by_index_like_a_stable_sort(heuristic, mix):
    # Integer data: the boundary values repeat, which exercises the tie fix-up pass.
    x = torch.randint(-3, 4, (6, 37), generator=torch.Generator().manual_seed(1)).float()
    mix = BitMix.coerce(mix)
    assert torch.equal(make_bitmap(x, mix, heuristic), reference_bitmap(heuristic_key(x, heuristic), mix))


@pytest.mark.parametrize("mix", MIXES)
def test_torch_selection_path_equals_numpy_path(mix):
    # The accelerator path (one sort) must give the same map as the CPU (partition) path.
    mix = BitMix.coerce(mix)
    key = torch.randint(0, 5, (1000,), generator=torch.Generator().manual_seed(3)).float()
    cpu, t_cpu = select_slices(key, mix)
    acc, t_acc = _select_torch(key, mix, mix.cuts(key.numel()))
    assert torch.equal(cpu, acc) and t_cpu == t_acc


@pytest.mark.parametrize("avg", [1.1, 1.3, 1.4, 1.6, 1.9])
@pytest.mark.parametrize("heuristic", HEURISTICS)
def test_counts_exact_and_average(avg, heuristic):
    x = torch.randn(64, 3, 3, 3)
    mix = BitMix.from_average(avg)
    m = make_bitmap(x, mix, heuristic)
    counts = tuple(int((m == b).sum()) for b in mix.bits)
    assert counts == mix.counts(x.numel())
    assert set(torch.unique(m).tolist()) <= set(mix.bits)
    assert abs(m.float().mean().item() - avg) <= len(mix.bits) / x.numel()


def test_orderings_hand_example():
    x = torch.tensor([0.1, -0.9, 0.5, -2.0, 0.45, 3.0, -0.55, 0.2, 1.0, -0.05])
    mix = {1: 0.5, 2: 0.3, 3: 0.2}
    # |x| = .1 .9 .5 2 .45 3 .55 .2 1 .05 ; mean |x| = 0.875
    assert make_bitmap(x, mix, "bottom_up").tolist() == [1, 2, 1, 3, 1, 3, 2, 1, 2, 1]
    assert make_bitmap(x, mix, "top_down").tolist() == [3, 1, 2, 1, 2, 1, 1, 2, 1, 3]
    # middle-out key ||x| - 0.875|: .775 .025 .375 1.125 .425 2.125 .325 .675 .125 .825
    assert make_bitmap(x, mix, "middle_out").tolist() == [2, 1, 1, 3, 1, 3, 1, 2, 1, 2]


def test_middle_out_gives_fewest_bits_near_mean_magnitude():
    x = torch.randn(10000)
    m = make_bitmap(x, 1.4, "middle_out")
    d = (x.abs() - x.abs().mean()).abs()
    assert d[m == 1].max() <= d[m == 2].min() and d[m == 2].max() <= d[m == 3].min()


def test_random_is_a_fixed_seeded_permutation():
    x = torch.randn(1000)
    a = make_bitmap(x, 1.4, "random")
    b = make_bitmap(torch.randn(1000), 1.4, "random")
    assert torch.equal(a, b)  # depends on the size and seed only
    g = torch.Generator().manual_seed(7)
    c = make_bitmap(x, 1.4, "random", generator=g)
    ranks = torch.randperm(1000, generator=torch.Generator().manual_seed(7))
    assert torch.equal(c, reference_bitmap(ranks, BitMix.from_average(1.4)))
    assert not torch.equal(a, c)


def test_homogeneous_mix_is_constant():
    assert torch.equal(make_bitmap(torch.randn(5, 5), 2), torch.full((5, 5), 2, dtype=torch.int8))


def test_all_zero_tensor():
    m = make_bitmap(torch.zeros(100), 1.4)
    assert [int((m == b).sum()) for b in (1, 2, 3)] == [70, 20, 10]


@pytest.mark.parametrize("block", [4, 7, 16])
@pytest.mark.parametrize("heuristic", HEURISTICS)
def test_block_granularity(block, heuristic):
    w = torch.randn(6, 5, 3, 3)  # rows of K = 45 inputs
    m = make_bitmap(w, 1.4, heuristic, block=block)
    rows, nb, k = block_view_shape(w.shape, block)
    assert (rows, nb, k) == (6, -(-45 // block), 45)
    flat = m.reshape(rows, k)
    for r in range(rows):
        for b in range(nb):
            run = flat[r, b * block : (b + 1) * block]
            assert (run == run[0]).all()
    block_bits = flat[:, ::block].reshape(-1)
    assert tuple(int((block_bits == b).sum()) for b in (1, 2, 3)) == BitMix.from_average(1.4).counts(rows * nb)


def test_block_ranks_by_mean_key():
    w = torch.tensor([[0.1, 0.1, 5.0, 5.0, 1.0, 1.0, 2.0, 2.0]])
    m = make_bitmap(w, {1: 0.5, 2: 0.5}, "bottom_up", block=2)
    assert m.tolist() == [[1, 1, 2, 2, 1, 1, 2, 2]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    x = torch.randn(500, dtype=torch.float64)
    m = make_bitmap(x.to(dtype), 1.4)
    assert tuple(int((m == b).sum()) for b in (1, 2, 3)) == (350, 100, 50)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    x = torch.randn(10000)
    for h in HEURISTICS:
        assert torch.equal(make_bitmap(x.cuda(), 1.4, h).cpu(), make_bitmap(x, 1.4, h))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(x=torch.tensor([1.0, float("nan")])), ValueError, "x: contains NaN"),
        (dict(x=torch.tensor([1.0, float("inf")])), ValueError, "x: contains Inf"),
        (dict(x=torch.tensor([])), ValueError, "x: expected a non-empty tensor"),
        (dict(x=torch.tensor([1, 2])), TypeError, "x: expected a floating-point tensor"),
        (dict(x=[1.0]), TypeError, "x: expected a torch.Tensor"),
        (dict(heuristic="sideways"), ValueError, "heuristic: unknown 'sideways'; allowed: middle_out, top_down, bottom_up, random"),
        (dict(mix={1: 0.6, 2: 0.6}), ValueError, "must sum to 1"),
        (dict(mix={1: -0.5, 2: 1.5}), ValueError, ">= 0"),
        (dict(mix=9), ValueError, "bits: expected an integer in 1..8, got 9"),
        (dict(block=0), ValueError, "block: expected an integer >= 1, got 0"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(x=torch.randn(10), mix=1.4, heuristic="middle_out", block=1) | kwargs
    with pytest.raises(exc, match=match):
        make_bitmap(args["x"], args["mix"], args["heuristic"], block=args["block"])
