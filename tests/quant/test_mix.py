import pytest

from hbnn.quant.mix import PAPER_MIXES, BitMix


@pytest.mark.parametrize(
    "avg,expected",
    [
        (1.1, {1: 0.9, 2: 0.1}),
        (1.2, {1: 0.9, 3: 0.1}),
        (1.3, {1: 0.7, 2: 0.3}),
        (1.4, {1: 0.7, 2: 0.2, 3: 0.1}),
        (1.5, {1: 0.5, 2: 0.5}),
        (1.6, {1: 0.6, 2: 0.2, 3: 0.2}),
        (1.7, {1: 0.5, 2: 0.3, 3: 0.2}),
        (1.8, {1: 0.4, 2: 0.4, 3: 0.2}),
        (1.9, {1: 0.4, 2: 0.3, 3: 0.3}),
    ],
)
def test_from_average_paper_mixes(avg, expected):
    mix = BitMix.from_average(avg)
    assert mix.to_dict() == pytest.approx(expected)
    assert mix.average == pytest.approx(avg, abs=1e-12)


@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_integer_average_is_homogeneous(bits):
    mix = BitMix.from_average(bits)
    assert mix.is_homogeneous and mix.bits == (bits,) and mix.average == bits


def test_custom_mix_zero_fraction_dropped():
    mix = BitMix({1: 0.8, 2: 0.0, 3: 0.2})
    assert mix.bits == (1, 3) and mix.fractions == (0.8, 0.2)
    assert mix.average == pytest.approx(1.4)
    assert BitMix.parse("80/0/20") == mix


@pytest.mark.parametrize(
    "text,expected",
    [("70/20/10", {1: 0.7, 2: 0.2, 3: 0.1}), ("1:0.5,2:0.5", {1: 0.5, 2: 0.5}), ("1.4", {1: 0.7, 2: 0.2, 3: 0.1}), ("2", {2: 1.0})],
)
def test_parse(text, expected):
    assert BitMix.parse(text).to_dict() == pytest.approx(expected)


def test_coerce_forms():
    assert BitMix.coerce(2) == BitMix({2: 1.0})
    assert BitMix.coerce(1.4) == BitMix.from_average(1.4)
    assert BitMix.coerce({"1": 0.5, "2": 0.5}) == BitMix({1: 0.5, 2: 0.5})
    with pytest.raises(TypeError, match="bits"):
        BitMix.coerce(True)
    with pytest.raises(TypeError, match="bits"):
        BitMix.coerce([1, 2])


@pytest.mark.parametrize("n", [1, 7, 10, 99, 1000, 12345])
@pytest.mark.parametrize("avg", sorted(PAPER_MIXES))
def test_counts_sum_and_rounding(n, avg):
    mix = BitMix.from_average(avg)
    counts = mix.counts(n)
    assert sum(counts) == n and all(c >= 0 for c in counts)
    for c, p in zip(counts[:-1], mix.fractions[:-1]):
        assert abs(c - p * n) <= 0.5 + 1e-9


def test_counts_exact_example():
    assert BitMix.from_average(1.4).counts(1152) == (806, 230, 116)
    assert BitMix({1: 0.5, 2: 0.5}).counts(3) == (2, 1)  # half up, remainder to the largest


@pytest.mark.parametrize(
    "mix,match",
    [
        ({1: -0.1, 2: 1.1}, "fraction for 1 bits must be a number >= 0"),
        ({1: 0.5, 2: 0.4}, "must sum to 1"),
        ({0: 1.0}, "bits: expected an integer in 1..8, got 0"),
        ({9: 1.0}, "bits: expected an integer in 1..8, got 9"),
        ({1.5: 1.0}, "bits: expected an integer"),
        ({}, "non-empty"),
        ({1: float("nan")}, "fraction"),
    ],
)
def test_invalid_mixes(mix, match):
    with pytest.raises(ValueError, match=match):
        BitMix(mix)


@pytest.mark.parametrize("avg", [1.25, 0.5, 2.5, 9, float("nan")])
def test_from_average_rejects(avg):
    with pytest.raises(ValueError, match="average|bits"):
        BitMix.from_average(avg)


def test_from_average_error_lists_allowed():
    with pytest.raises(ValueError, match=r"1\.1, 1\.2, 1\.3, 1\.4"):
        BitMix.from_average(1.25)


def test_str():
    assert str(BitMix.from_average(2)) == "2-bit"
    assert str(BitMix.from_average(1.4)) == "1.4-bit (70/20/10 % of 1/2/3-bit)"
