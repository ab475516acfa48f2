"""Property tests (hypothesis) for the core API's invariants.

Exact counts per bitwidth, equality with the stable-sort reference on every selection path,
determinism, finite results for any finite input of every float dtype (maxima included),
exact power-of-two equivariance (the range-scaled loop equals the plain one), and the
round trips Eq. 4 = Eq. 5 with a homogeneous map, planes -> x_hat, mix -> text -> mix.
Profiles live in ``tests/conftest.py``: ``ci`` by default, ``HYPOTHESIS_PROFILE=big`` for
the long run.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("hypothesis")
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hbnn.kernels import available_backends, cpu_features  # noqa: E402
from hbnn.quant import (  # noqa: E402
    HEURISTICS,
    PAPER_MIXES,
    ActQuantizer,
    BitMix,
    WeightQuantizer,
    binarize_planes,
    binarize_with_scales,
    dequantize_planes,
    hetero_binarize,
    make_bitmap,
    residual_binarize,
)
from hbnn.quant import select_c  # noqa: E402
from hbnn.quant.bitmap import _select_torch, block_view_shape, expand_blocks, select_slices, sort_bitmap  # noqa: E402
from hbnn.quant.keys import heuristic_key  # noqa: E402

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
KEYED = [h for h in HEURISTICS if h != "random"]
VARIANTS = cpu_features()["variants"] if "c" in available_backends() else []


# ------------------------------------------------------------------ strategies
def _elements(dtype: torch.dtype) -> st.SearchStrategy[float]:
    """Any finite value of ``dtype`` (as a float64), biased to the extremes, ties and zeros."""
    info = torch.finfo(dtype)
    big, tiny = float(info.max), float(info.tiny)
    width = {torch.float16: 16, torch.float32: 32, torch.float64: 64}.get(dtype, 32)
    return st.one_of(
        st.floats(-big, big, width=width),
        st.sampled_from([big, -big, 0.0, -0.0, tiny, -tiny, big / 3, -big / 2, 1.0, -1.0]),
        st.floats(-4.0, 4.0),
        st.integers(-3, 3).map(float),
    )


@st.composite
def tensors(draw, dtypes=tuple(DTYPES), max_side: int = 5) -> torch.Tensor:
    """A finite tensor of 1-3 dims, up to ``max_side`` per dim; sometimes constant."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(st.lists(st.integers(1, max_side), min_size=1, max_size=3))
    n = math.prod(shape)
    if draw(st.integers(0, 9)) == 0:
        values = [draw(_elements(dtype))] * n
    else:
        values = draw(st.lists(_elements(dtype), min_size=n, max_size=n))
    big = torch.finfo(dtype).max  # rounding a value <= max never passes max
    x = torch.tensor(values, dtype=torch.float64).clamp(-big, big).to(dtype).reshape(shape)
    note(f"x = {x!r}")
    return x


@st.composite
def percent_mixes(draw) -> tuple[BitMix, list[int], list[int]]:
    """A mix of 2-4 bitwidths in 1..8 with integer percents: ``(mix, bits, percents)``."""
    k = draw(st.integers(2, 4))
    bits = sorted(draw(st.lists(st.integers(1, 8), min_size=k, max_size=k, unique=True)))
    cuts = sorted(draw(st.lists(st.integers(1, 99), min_size=k - 1, max_size=k - 1, unique=True)))
    percents = [b - a for a, b in zip([0, *cuts], [*cuts, 100])]
    return BitMix({b: p / 100 for b, p in zip(bits, percents)}), bits, percents


MIXES = st.one_of(
    st.sampled_from(sorted(PAPER_MIXES)).map(BitMix.from_average),
    st.integers(1, 4).map(BitMix.homogeneous),
    percent_mixes().map(lambda t: t[0]),
)


def bitmaps(x: torch.Tensor, max_bits: int = 4) -> st.SearchStrategy[torch.Tensor]:
    """Any integer map of ``x``'s shape with values in 1..max_bits."""
    n = x.numel()
    return st.lists(st.integers(1, max_bits), min_size=n, max_size=n).map(
        lambda v: torch.tensor(v, dtype=torch.int8).reshape(x.shape))


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (dtype, shape, values and the sign of zero)."""
    return a.dtype == b.dtype and torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


# ------------------------------------------------------------------ Algorithm 1
@given(x=tensors(max_side=7), mix=MIXES, heuristic=st.sampled_from(HEURISTICS), block=st.integers(1, 3))
def test_make_bitmap_gives_exact_counts(x, mix, heuristic, block):
    m = make_bitmap(x, mix, heuristic, block=block)
    assert m.dtype == torch.int8 and m.shape == x.shape
    rows, nb, k = block_view_shape(x.shape, block)
    units = m.reshape(rows, k)[:, ::block].reshape(-1)  # one value per block (per entry if block=1)
    assert same(expand_blocks(units, x.shape, block), m)  # blocks are constant
    assert tuple(int((units == b).sum()) for b in mix.bits) == mix.counts(rows * nb)


@given(x=tensors(dtypes=(torch.float32, torch.float64), max_side=9), mix=MIXES, heuristic=st.sampled_from(KEYED))
def test_every_selection_path_equals_the_stable_sort(x, mix, heuristic):
    key = heuristic_key(x, heuristic)
    ref = sort_bitmap(key, mix)
    assert same(make_bitmap(x, mix, heuristic), ref)
    assert same(select_slices(key.reshape(-1), mix)[0].reshape(x.shape), ref)  # numpy partition
    assert same(_select_torch(key.reshape(-1), mix, mix.cuts(x.numel()))[0].reshape(x.shape), ref)
    if select_c.available(x, heuristic):
        for variant in VARIANTS:  # the C kernels, every SIMD variant (None: no cut inside, the caller's path)
            got = select_c.select_map(x, mix, heuristic, variant=variant)
            assert got is None or same(got[0], ref), variant
            assert got is not None or mix.is_homogeneous or any(not 0 < c < x.numel() for c in mix.cuts(x.numel()))


@given(x=tensors(), mix=MIXES, heuristic=st.sampled_from(HEURISTICS), cdim=st.sampled_from([None, 0]))
def test_same_input_same_map_and_output(x, mix, heuristic, cdim):
    m1, m2 = make_bitmap(x, mix, heuristic), make_bitmap(x.clone(), mix, heuristic)
    assert same(m1, m2)
    assert same(hetero_binarize(x, m1, channel_dim=cdim), hetero_binarize(x.clone(), m2, channel_dim=cdim))
    if x.dtype == torch.float32 and heuristic in ("bottom_up", "top_down"):
        # Keys |x| and -|x| are exact in both precisions: the C path (float32) and the
        # numpy path (float64) must cut the same ranking. (Middle-out keys ||x| - mean| round
        # differently per precision; its C-vs-numpy check is on one key, above.)
        assert same(make_bitmap(x.double(), mix, heuristic), m1)


# ------------------------------------------------------------------ finite in, finite out
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_finite_inputs_give_finite_results(dtype, data):
    x = data.draw(tensors(dtypes=(dtype,)))
    bitmap = data.draw(bitmaps(x))
    cdim = data.draw(st.sampled_from([None, *range(x.dim())]))
    bits = data.draw(st.integers(1, 8))
    x.requires_grad_(True)
    outs = [residual_binarize(x, bits, channel_dim=cdim), hetero_binarize(x, bitmap, channel_dim=cdim)]
    signs, masks, scales = binarize_planes(x, bitmap, channel_dim=cdim)
    outs += [scales, dequantize_planes(signs, masks, scales, cdim or 0, dtype=dtype)]
    if cdim is None:
        outs.append(binarize_with_scales(x, bitmap, scales))
    assert all(finite(o) for o in outs), [o for o in outs if not finite(o)]
    g = torch.ones_like(x)
    (outs[0] * g).sum().backward()
    assert finite(x.grad) and same(x.grad, g * (x.detach().abs() <= 1))


@given(x=tensors(), mix=MIXES, heuristic=st.sampled_from(HEURISTICS), per_channel=st.booleans())
def test_quantizer_modules_stay_finite(x, mix, heuristic, per_channel):
    act = ActQuantizer({"bits": mix, "heuristic": heuristic})
    for _ in range(2):
        assert finite(act(x))
    assert all(finite(b) for b in act.buffers() if b.is_floating_point())
    act.eval()
    assert finite(act(x)) and finite(act(x * 0.5))
    weight = WeightQuantizer({"bits": mix, "heuristic": heuristic, "per_channel": per_channel})
    assert finite(weight(x)) and finite(weight.eval()(x))


@pytest.mark.parametrize("dtype,lowest,highest", [(torch.float32, -80, 104), (torch.float64, -900, 1000)])
@given(data=st.data())
def test_power_of_two_scaling_is_exact(dtype, lowest, highest, data):
    # Magnitudes 2^-20..2^20 times 2^j stay normal, and max|x| 2^j <= finfo.max / 4: the
    # range-scaled loop (k > 0 for large j) must equal 2^j times the plain one, bit for bit.
    n = data.draw(st.integers(1, 64))
    mags = data.draw(st.lists(st.one_of(st.just(0.0), st.floats(2.0**-20, 2.0**20)), min_size=n, max_size=n))
    sgn = data.draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=n, max_size=n))
    x = torch.tensor([m * s for m, s in zip(mags, sgn)], dtype=dtype)
    j = data.draw(st.integers(lowest, highest))
    bitmap = data.draw(bitmaps(x))
    scale = 2.0**j
    bits = data.draw(st.integers(1, 4))
    assert same(residual_binarize(x * scale, bits), residual_binarize(x, bits) * scale)
    assert same(hetero_binarize(x * scale, bitmap), hetero_binarize(x, bitmap) * scale)
    signs, masks, scales = binarize_planes(x * scale, bitmap)
    assert same(scales, binarize_planes(x, bitmap)[2] * scale)
    assert same(dequantize_planes(signs, masks, scales), hetero_binarize(x, bitmap) * scale)


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_homogeneous_map_equals_residual(dtype, data):
    x = data.draw(tensors(dtypes=(dtype,)))
    n = data.draw(st.integers(1, 8))
    cdim = data.draw(st.sampled_from([None, *range(x.dim())]))
    full = torch.full(x.shape, n, dtype=torch.int8)
    assert same(hetero_binarize(x, full, channel_dim=cdim), residual_binarize(x, n, channel_dim=cdim))


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_dequantize_planes_inverts_binarize_planes(dtype, data):
    x = data.draw(tensors(dtypes=(dtype,)))
    bitmap = data.draw(bitmaps(x, max_bits=data.draw(st.integers(1, 8))))
    cdim = data.draw(st.sampled_from([None, *range(x.dim())]))
    signs, masks, scales = binarize_planes(x, bitmap, channel_dim=cdim)
    assert same(masks, torch.stack([bitmap > i for i in range(int(bitmap.max()))]))
    x_hat = hetero_binarize(x, bitmap, channel_dim=cdim)
    assert same(dequantize_planes(signs, masks, scales, cdim or 0, dtype=dtype), x_hat)
    if dtype in (torch.float32, torch.float64):  # scales are in x's dtype: no cast needed
        assert same(dequantize_planes(signs, masks, scales, cdim or 0), x_hat)


@given(drawn=percent_mixes(), average=st.sampled_from(sorted(PAPER_MIXES)), bits=st.integers(1, 8),
       n=st.integers(0, 10_000))
def test_bitmix_round_trips(drawn, average, bits, n):
    mix, widths, percents = drawn
    assert BitMix.coerce(mix) is mix
    assert BitMix.coerce(mix.to_dict()) == mix
    assert BitMix.coerce({str(b): p for b, p in mix.to_dict().items()}) == mix
    assert BitMix.coerce("/".join(str(percents[widths.index(b)] if b in widths else 0)
                                  for b in range(1, max(widths) + 1))) == mix
    assert BitMix.coerce(",".join(f"{b}:{p}" for b, p in mix.to_dict().items())) == mix
    paper = BitMix.from_average(average)
    assert paper.average == average and BitMix.coerce(average) == paper and BitMix.coerce(str(average)) == paper
    assert BitMix.coerce(paper.to_dict()) == paper
    assert BitMix.coerce(bits) == BitMix.from_average(bits) == BitMix.coerce(float(bits)) == BitMix.homogeneous(bits)
    assert BitMix.homogeneous(bits).average == bits
    counts = mix.counts(n)  # round(p n) half up; the largest bitwidth takes the remainder
    assert sum(counts) == n and min(counts) >= 0
    used = 0
    for c, p in zip(counts[:-1], mix.fractions[:-1]):
        assert c == min(math.floor(p * n + 0.5), n - used)
        used += c
