"""Structured bit maps (hbnn.quant.structure): unit views, key and error allocation, config."""

import heapq
import itertools
import math

import pytest
import torch

from hbnn.errors import ConfigError
from hbnn.quant import BitMix, LayerQuant, QuantSpec, make_bitmap
from hbnn.quant.bitmap import select_slices, sort_bitmap
from hbnn.quant.functional import residual_forward
from hbnn.quant.keys import heuristic_key
from hbnn.quant.structure import (
    Structure,
    error_allocation,
    error_budget,
    parse_structure,
    threshold_unit_map,
    unit_bitmap,
    unit_errors,
    unit_select,
)

MIX = BitMix.from_average(1.4)


# ------------------------------------------------------------------ explicit unit ids
def _conv_weight_ids(o, c, kh, kw, k):
    """Unit id of every entry of a conv weight under block<k>, by an explicit OHWI loop."""
    row = kh * kw * c
    per_row = -(-row // k)
    ids = torch.empty(o, c, kh, kw, dtype=torch.int64)
    for oo in range(o):
        pos = 0
        for ky in range(kh):
            for kx in range(kw):
                for cc in range(c):
                    ids[oo, cc, ky, kx] = oo * per_row + pos // k
                    pos += 1
    return ids


def _act_ids(b, c, h, w, g):
    """Unit id of every entry of a conv input under group<g> (g = c: pixel), explicit loop."""
    per_pixel = -(-c // g)
    ids = torch.empty(b, c, h, w, dtype=torch.int64)
    for bb, hh, ww in itertools.product(range(b), range(h), range(w)):
        pixel = (bb * h + hh) * w + ww
        for cc in range(c):
            ids[bb, cc, hh, ww] = pixel * per_pixel + cc // g
    return ids


def _expand_ids(structure, shape, feature_dim=1):
    n = structure.n_units(shape, feature_dim)
    return structure.expand(torch.arange(n), shape, feature_dim)


@pytest.mark.parametrize("k", [1, 4, 7, 8, 27])
def test_block_units_are_ohwi_runs(k):
    shape = (5, 3, 3, 3)  # rows of 27 inputs: k = 4 leaves a last run of 3
    assert torch.equal(_expand_ids(parse_structure(f"block{k}"), shape), _conv_weight_ids(*shape, k))


def test_channel_units_are_output_rows():
    for shape in [(6, 3, 3, 3), (10, 5)]:
        ids = _expand_ids(parse_structure("channel"), shape)
        assert torch.equal(ids, torch.arange(shape[0]).reshape(-1, *[1] * (len(shape) - 1)).expand(shape))


def test_linear_block_units_are_natural_runs():
    ids = _expand_ids(parse_structure("block4"), (3, 10))
    want = torch.tensor([[r * 3 + j // 4 for j in range(10)] for r in range(3)])
    assert torch.equal(ids, want)


@pytest.mark.parametrize("name,g", [("pixel", 6), ("group2", 2), ("group4", 4), ("group1", 1)])
def test_act_units_on_conv_inputs(name, g):
    shape = (2, 6, 3, 4)
    assert torch.equal(_expand_ids(parse_structure(name), shape), _act_ids(*shape, g))


def test_act_groups_on_linear_inputs_and_rows_view():
    s = parse_structure("group3")
    want = torch.tensor([[r * 3 + j // 3 for j in range(7)] for r in range(4)])
    assert torch.equal(_expand_ids(s, (4, 7)), want)
    # features on the last dim of a [B, T, K] linear input
    ids = _expand_ids(s, (2, 2, 7), feature_dim=-1)
    assert torch.equal(ids.reshape(4, 7), want)
    # the packed engine's NHWC rows view of a conv input gets the same units as the conv input
    x_ids = _expand_ids(s, (2, 7, 3, 3))
    rows_ids = _expand_ids(s, (2 * 3 * 3, 7))
    assert torch.equal(x_ids.permute(0, 2, 3, 1).reshape(-1, 7), rows_ids)
    assert torch.equal(_expand_ids(parse_structure("pixel"), (5, 7)), torch.arange(5)[:, None].expand(5, 7))


def test_entry_units_and_legacy_block():
    shape = (4, 3, 2, 2)
    assert torch.equal(_expand_ids(parse_structure("entry"), shape), torch.arange(48).reshape(shape))
    legacy = _expand_ids(Structure("oihw_block", 5), shape)  # weight.reshape(O, -1) order
    assert torch.equal(legacy, torch.tensor([[r * 3 + j // 5 for j in range(12)] for r in range(4)]).reshape(shape))


@pytest.mark.parametrize("name,shape,fd", [("block4", (5, 3, 3, 3), 1), ("channel", (4, 6), 1),
                                           ("pixel", (2, 6, 3, 4), 1), ("group4", (2, 6, 3, 4), 1),
                                           ("group3", (2, 3, 7), -1), ("entry", (3, 5), 1)])
def test_unit_means_sums_sizes_match_the_ids(name, shape, fd):
    s = parse_structure(name)
    ids = _expand_ids(s, shape, fd).reshape(-1)
    values = torch.randint(-50, 50, shape).double()  # integers: every sum is exact
    n = s.n_units(shape, fd)
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, ids, values.reshape(-1))
    sizes = torch.bincount(ids, minlength=n)
    assert torch.equal(s.unit_sizes(shape, fd), sizes)
    assert torch.equal(s.unit_sums(values, fd), sums)
    assert torch.equal(s.unit_means(values, fd), sums / sizes)


# --------------------------------------------------------------------- key allocation
@pytest.mark.parametrize("heuristic", ["middle_out", "top_down", "bottom_up"])
@pytest.mark.parametrize("name,shape", [("block8", (8, 3, 3, 3)), ("block27", (8, 3, 3, 3)),
                                        ("channel", (10, 5)), ("pixel", (3, 8, 4, 4)), ("group4", (3, 8, 4, 4))])
def test_key_allocation_is_algorithm_1_on_unit_keys(name, shape, heuristic):
    s = parse_structure(name)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    units = unit_bitmap(x, MIX, s, heuristic)
    keys = s.unit_means(heuristic_key(x, heuristic))
    assert torch.equal(units.bits, sort_bitmap(keys, MIX))
    n = s.n_units(shape)
    assert [int((units.bits == b).sum()) for b in MIX.bits] == list(MIX.counts(n))
    entry = units.expand()
    assert torch.equal(entry, s.expand(units.bits, shape)) and entry.shape == x.shape
    assert torch.equal(units.levels(MIX), units.bits.long() - 1)


def test_random_allocation_is_a_seeded_permutation_of_units():
    s = parse_structure("block4")
    w = torch.randn(6, 4, 3, 3)
    units = unit_bitmap(w, MIX, s, "random", generator=torch.Generator().manual_seed(5))
    n = s.n_units(w.shape)
    want, _ = select_slices(torch.randperm(n, generator=torch.Generator().manual_seed(5)), MIX)
    assert torch.equal(units.bits, want)


@pytest.mark.parametrize("heuristic", ["middle_out", "random", "bottom_up"])
def test_legacy_block_structure_equals_make_bitmap(heuristic):
    w = torch.randn(6, 5, 3, 3)
    gen = torch.Generator().manual_seed(0)
    got = unit_bitmap(w, MIX, Structure("oihw_block", 7), heuristic, generator=gen).expand()
    assert torch.equal(got, make_bitmap(w, MIX, heuristic, torch.Generator().manual_seed(0), block=7))


def test_entry_structure_equals_make_bitmap():
    x = torch.randn(7, 9)
    assert torch.equal(unit_bitmap(x, MIX, parse_structure("entry")).expand(), make_bitmap(x, MIX))


def test_threshold_map_reproduces_the_training_selection():
    s = parse_structure("group4")
    x = torch.randn(4, 8, 5, 5)
    units, thresholds = unit_select(x, MIX, s, "middle_out")
    again = threshold_unit_map(x, MIX, "middle_out", thresholds, None, s)
    assert torch.equal(again.bits, units.bits)  # distinct unit keys: key > t_j is exactly the ranking's cut
    sampled, t2 = unit_select(x, MIX, s, "middle_out", sampled=True)  # <= 16384 units: exact
    assert torch.equal(sampled.bits, units.bits) and t2 == thresholds


# ------------------------------------------------------------------- error allocation
def _sequential_greedy(errors, bits, budget):
    """The greedy as described, one step at a time with a heap (the reference)."""
    n, width = errors.shape
    steps = [bits[j + 1] - bits[j] for j in range(width - 1)]
    levels = [0] * n

    def entry(u):
        j = levels[u]
        gain = (float(errors[u, j]) - float(errors[u, j + 1])) / steps[j]
        return (-gain, u)

    heap = [entry(u) for u in range(n)]
    heapq.heapify(heap)
    spent = 0
    while heap:
        _, u = heapq.heappop(heap)
        cost = steps[levels[u]]
        if spent + cost > budget:
            break
        spent += cost
        levels[u] += 1
        if levels[u] < width - 1:
            heapq.heappush(heap, entry(u))
    return torch.tensor(levels)


def _brute_force(errors, bits, budget):
    """Minimum total error over all level assignments spending exactly ``budget`` extra bits."""
    n, width = errors.shape
    best = None
    for levels in itertools.product(range(width), repeat=n):
        if sum(bits[lv] - bits[0] for lv in levels) != budget:
            continue
        total = sum(float(errors[u, lv]) for u, lv in enumerate(levels))
        best = total if best is None else min(best, total)
    return best


def _concave_errors(n, width, gen):
    """Errors with decreasing, non-increasing drops per bit (concave gains)."""
    drops = torch.rand(n, width - 1, generator=gen, dtype=torch.float64).sort(dim=1, descending=True).values
    start = torch.rand(n, 1, generator=gen, dtype=torch.float64) * 3 + 3
    return torch.cat([start, start - drops.cumsum(1)], dim=1)


@pytest.mark.parametrize("seed", range(6))
def test_error_allocation_is_optimal_for_concave_gains(seed):
    gen = torch.Generator().manual_seed(seed)
    bits = (1, 2, 3)
    errors = _concave_errors(5, 3, gen)
    for budget in range(0, 11):
        levels = error_allocation(errors, bits, budget)
        assert int(levels.sum()) == budget  # unit steps: the budget is spent exactly
        total = float(errors[torch.arange(5), levels].sum())
        assert total == pytest.approx(_brute_force(errors, bits, budget), abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("bits", [(1, 2, 3), (1, 3), (1, 2, 4), (2, 3, 4, 6)])
def test_error_allocation_equals_the_sequential_greedy(seed, bits):
    gen = torch.Generator().manual_seed(seed)
    errors = torch.randn(12, len(bits), generator=gen, dtype=torch.float64)  # gains of any sign, not concave
    errors[seed % 12] = errors[(seed + 1) % 12]  # a tie between units
    top = 12 * (bits[-1] - bits[0])
    for budget in sorted({0, 1, top // 3, top // 2, top - 1, top}):
        assert torch.equal(error_allocation(errors, bits, budget), _sequential_greedy(errors, bits, budget))


def test_error_allocation_prefix_rule():
    # unit 0: step 1 gains little, step 2 a lot; unit 1: one medium step each
    errors = torch.tensor([[10.0, 9.9, 0.0], [10.0, 7.0, 4.0]], dtype=torch.float64)
    assert error_allocation(errors, (1, 2, 3), 1).tolist() == [0, 1]  # never step 2 without step 1
    assert error_allocation(errors, (1, 2, 3), 2).tolist() == [0, 2]
    # priorities are prefix minima (0.1 for both of unit 0's steps): taken together once reached
    assert error_allocation(errors, (1, 2, 3), 3).tolist() == [1, 2]
    assert error_allocation(errors, (1, 2, 3), 4).tolist() == [2, 2]
    # ties: the lower unit first
    same = torch.tensor([[5.0, 4.0], [5.0, 4.0], [5.0, 4.0]], dtype=torch.float64)
    assert error_allocation(same, (1, 2), 2).tolist() == [1, 1, 0]
    # a 2-bit step that does not fit the last bit of the budget is not taken
    assert error_allocation(torch.tensor([[3.0, 1.0], [3.0, 2.0]], dtype=torch.float64), (1, 3), 3).tolist() == [1, 0]


def test_unit_errors_definition():
    s = parse_structure("block4")
    w = torch.randn(3, 2, 3, 3)
    got = unit_errors(w, MIX, s, channel_dim=0)
    for j, b in enumerate(MIX.bits):
        x_hat = residual_forward(w, None, b, 0)[0]
        sq = (w.double() - x_hat.double()) ** 2
        ids = _expand_ids(s, w.shape).reshape(-1)
        want = torch.zeros(s.n_units(w.shape), dtype=torch.float64).index_add_(0, ids, sq.reshape(-1))
        torch.testing.assert_close(got[:, j], want, atol=1e-12, rtol=0)


def test_error_allocation_lowers_the_proxy_error_against_key():
    s = parse_structure("block8")
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(3))
    errors = unit_errors(w, MIX, s)
    rows = torch.arange(errors.shape[0])
    err = unit_bitmap(w, MIX, s, allocate="error").levels(MIX)
    key = unit_bitmap(w, MIX, s).levels(MIX)
    assert float(errors[rows, err].sum()) < float(errors[rows, key].sum())


@pytest.mark.parametrize("allocate", ["key", "error"])
@pytest.mark.parametrize("average", [1.1, 1.2, 1.4, 1.5, 1.9])
@pytest.mark.parametrize("name,shape", [("block8", (8, 3, 3, 3)), ("block27", (8, 3, 3, 3)), ("channel", (10, 5)),
                                        ("channel", (3, 4)), ("block9", (8, 3, 3, 3)), ("entry", (5, 3))])
def test_realized_bits_within_one_unit(name, shape, average, allocate):
    mix = BitMix.from_average(average)
    s = parse_structure(name)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    units = unit_bitmap(x, mix, s, allocate=allocate)
    n = s.n_units(shape)
    spread = mix.max_bits - mix.min_bits
    assert abs(float(units.bits.float().sum()) - average * n) <= spread  # one unit's range
    if bool((s.unit_sizes(shape) == s.unit_sizes(shape)[0]).all()):  # equal units: entry-weighted too
        realized = float(units.expand().double().mean())
        assert abs(realized - average) <= spread / n + 1e-12
    if allocate == "error":
        assert 0 <= error_budget(mix, n) - (float(units.bits.sum()) - mix.min_bits * n) < max(
            b - a for a, b in zip(mix.bits, mix.bits[1:]))


def test_error_budget_rounds_half_up():
    assert error_budget(MIX, 8) == 3 and error_budget(MIX, 10) == 4 and error_budget(BitMix.from_average(1.5), 3) == 2


# ----------------------------------------------------------------------------- config
def test_parse_structure_names_round_trip():
    for name in ["entry", "channel", "pixel", "block1", "block64", "group8"]:
        assert parse_structure(name).name == name
    assert parse_structure("block64").role == "weight" and parse_structure("group8").role == "act"
    assert parse_structure("entry").role == "any"


def test_spec_round_trip_and_old_dicts():
    spec = QuantSpec(bits=1.4, structure="block64", allocate="error")
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    old = {"bits": {"1": 0.7, "2": 0.2, "3": 0.1}, "heuristic": "middle_out", "block": 1, "per_channel": False,
           "eval_mode": "running", "momentum": 0.1, "seed": 0, "select": "exact"}
    loaded = QuantSpec.from_dict(old)
    assert (loaded.structure, loaded.allocate) == ("entry", "key")
    assert loaded.to_dict() == old  # defaults stay out of the dict form (configs, hashes unchanged)
    lq = LayerQuant(weight={"bits": 1.4, "structure": "channel"}, act={"bits": 1.4, "structure": "group8"})
    assert LayerQuant.from_dict(lq.to_dict()) == lq


BAD_SPECS = [
    ({"structure": "blk64"}, r"^structure: invalid value 'blk64'; allowed: entry, block<K> \(e.g. block64\), "
                             r"channel for weights; pixel, group<G> \(e.g. group8\) for activations$"),
    ({"structure": "block0"}, r"^structure: invalid value 'block0'; allowed: block<K> with K >= 1$"),
    ({"structure": "group0"}, r"^structure: invalid value 'group0'; allowed: group<G> with G >= 1$"),
    ({"structure": "Block8"}, r"^structure: invalid value 'Block8'"),
    ({"structure": 8}, r"^structure: invalid value 8; allowed: a string$"),
    ({"allocate": "greedy"}, r"^allocate: invalid value 'greedy'; allowed: key, error$"),
    ({"structure": "block8", "block": 4}, r"^block: invalid value 4; allowed: 1 together with structure 'block8'"),
    ({"allocate": "error", "block": 4}, r"^block: invalid value 4; allowed: 1 with allocate 'error'"),
    ({"allocate": "error", "heuristic": "random"}, r"^heuristic: invalid value 'random'; allowed: middle_out"),
]


@pytest.mark.parametrize("data,message", BAD_SPECS)
def test_bad_specs(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        QuantSpec.from_dict({"bits": 1.4, **data})
    assert "\n" not in str(info.value)


BAD_LAYERS = [
    ({"weight": {"bits": 1.4, "structure": "pixel"}}, r"^q.weight.structure: invalid value 'pixel'; allowed: entry, "
                                                      r"block<K> \(e.g. block64\), channel \(weight structures\)$"),
    ({"weight": {"bits": 1.4, "structure": "group4"}}, r"^q.weight.structure: invalid value 'group4'"),
    ({"act": {"bits": 1.4, "structure": "block4"}}, r"^q.act.structure: invalid value 'block4'; allowed: entry, "
                                                    r"pixel, group<G> \(e.g. group8\) \(act structures\)$"),
    ({"act": {"bits": 1.4, "structure": "channel"}}, r"^q.act.structure: invalid value 'channel'"),
    ({"act": {"bits": 1.4, "allocate": "error"}}, r"^q.act.allocate: invalid value 'error'; allowed: key"),
]


@pytest.mark.parametrize("data,message", BAD_LAYERS)
def test_bad_layer_specs(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        LayerQuant.from_dict(data, "q")
    assert "\n" not in str(info.value)


def test_function_level_block_longer_than_a_row_is_refused():
    with pytest.raises(ConfigError, match=r"structure: block64 is longer than a row of 27 entries .* use "
                                          r"block<N> with N <= 27, or channel"):
        unit_bitmap(torch.randn(8, 3, 3, 3), MIX, parse_structure("block64"))
    with pytest.raises(ConfigError, match=r"group16 is longer than a row of 8 .* or pixel"):
        unit_bitmap(torch.randn(2, 8, 3, 3), MIX, parse_structure("group16"))
    with pytest.raises(ConfigError, match=r"activation structures need an input of at least 2 dims"):
        unit_bitmap(torch.randn(8), MIX, parse_structure("pixel"))


def test_homogeneous_mix_gives_full_units():
    units = unit_bitmap(torch.randn(4, 8), BitMix.homogeneous(2), parse_structure("block4"), allocate="error")
    assert units.bits.tolist() == [2] * 8 and math.prod(units.expand().shape) == 32
