"""Property tests (hypothesis) for structured maps: units partition the tensor, the row view
inverts, key allocation counts units exactly, error allocation stays within one unit."""

import pytest
import torch

pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hbnn.quant import BitMix  # noqa: E402
from hbnn.quant.structure import Structure, error_budget, unit_bitmap  # noqa: E402

AVERAGES = [1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]


@st.composite
def cases(draw):
    """A structure and a tensor shape it fits (conv/linear weights, conv/linear inputs)."""
    kind = draw(st.sampled_from(["entry", "block", "channel", "pixel", "group"]))
    if kind in ("entry", "block", "channel"):
        shape = draw(st.sampled_from([(draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 3)),
                                       draw(st.integers(1, 3))), (draw(st.integers(1, 6)), draw(st.integers(1, 20)))]))
        length = max(1, torch.Size(shape)[1:].numel())
    else:
        shape = draw(st.sampled_from([(draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 3)),
                                       draw(st.integers(1, 3))), (draw(st.integers(1, 5)), draw(st.integers(1, 12)))]))
        length = shape[1]
    size = draw(st.integers(1, length)) if kind in ("block", "group") else 1
    return Structure(kind, size), shape


@given(cases())
def test_units_partition_the_tensor_and_rows_invert(case):
    s, shape = case
    n = s.n_units(shape)
    ids = s.expand(torch.arange(n), shape)
    assert ids.shape == shape
    assert torch.equal(torch.bincount(ids.reshape(-1), minlength=n), s.unit_sizes(shape))
    assert int(s.unit_sizes(shape).min()) >= 1
    x = torch.randn(shape)
    assert torch.equal(s.from_rows(s.to_rows(x), shape), x)
    r, length = s.rows(shape)
    assert r * length == x.numel()


@given(cases(), st.sampled_from(AVERAGES), st.sampled_from(["key", "error"]), st.integers(0, 2**16))
def test_allocations_count_units(case, average, allocate, seed):
    s, shape = case
    mix = BitMix.from_average(average)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    units = unit_bitmap(x, mix, s, allocate=allocate)
    n = s.n_units(shape)
    assert units.bits.shape == (n,) and set(units.bits.tolist()) <= set(mix.bits)
    if allocate == "key":
        assert [int((units.bits == b).sum()) for b in mix.bits] == list(mix.counts(n))
    else:
        spent = int(units.bits.long().sum()) - mix.min_bits * n
        steps = [b - a for a, b in zip(mix.bits, mix.bits[1:])] or [1]
        assert 0 <= error_budget(mix, n) - spent < max(steps)
    assert abs(float(units.bits.double().sum()) - average * n) <= mix.max_bits - mix.min_bits
