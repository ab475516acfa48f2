"""The paper's scaling rules, exact on simple cases, and their input checks."""

from __future__ import annotations

import math

import pytest

from hbnn.errors import ConfigError
from hbnn.hw import asic_scaling, fpga_scaling, load_catalog, scale


@pytest.fixture(scope="module")
def zc706():
    return load_catalog().platform("zc706")


@pytest.fixture(scope="module")
def asic():
    return load_catalog().platform("alemdar2017")


def test_fpga_linear_in_bits(zc706):
    est = fpga_scaling(zc706, 2)
    assert est.occupancy == pytest.approx(0.424, rel=1e-12)
    assert est.kfps == pytest.approx(10.95, rel=1e-12)
    assert est.watts == pytest.approx(7.2, rel=1e-12)
    assert not est.capped


def test_fpga_unfolding_multiplies_everything(zc706):
    est = fpga_scaling(zc706, 1, unfolding=3)
    assert (est.occupancy, est.kfps, est.watts) == pytest.approx((0.636, 65.7, 10.8), rel=1e-12)


def test_fpga_cap_scales_power_to_the_cap(zc706):
    est = fpga_scaling(zc706, 2, unfolding=4)  # 0.212 * 2 * 4 = 169.6 %
    assert est.capped and est.occupancy == 1.0
    assert est.requested_occupancy == pytest.approx(1.696, rel=1e-12)
    assert est.watts == pytest.approx(3.6 * 2 * 4 / 1.696, rel=1e-12)
    assert est.watts == pytest.approx(3.6 / 0.212, rel=1e-12)  # the whole device's power
    assert est.kfps == pytest.approx(21.9 * 4 / 2, rel=1e-12)  # kept, as in the paper
    assert est.effective_unfolding == pytest.approx(4 / 1.696, rel=1e-12)
    assert "capped at 100%" in est.notes[0]


def test_fpga_exactly_full_is_not_capped(zc706):
    est = fpga_scaling(zc706, 1, unfolding=1 / 0.212)
    assert not est.capped and est.occupancy == pytest.approx(1.0)


def test_fpga_op_ratio_and_workload_occupancy(zc706):
    est = fpga_scaling(zc706, 1, op_ratio=10, occupancy=0.5)
    assert est.kfps == pytest.approx(2.19, rel=1e-12)
    assert est.occupancy == 0.5
    assert est.watts == pytest.approx(3.6 * 0.5 / 0.212, rel=1e-12)


def test_asic_quadratic_in_bits_fixed_throughput(asic):
    est = asic_scaling(asic, 1)  # (1/2)^2 = 0.25
    assert (est.area_mm2, est.watts, est.kfps) == pytest.approx((1.515, 0.095, 3.4), rel=1e-12)
    est4 = asic_scaling(asic, 4, op_ratio=2)  # (4/2)^2 * 2 = 8
    assert (est4.area_mm2, est4.watts, est4.kfps) == pytest.approx((48.48, 3.04, 3.4), rel=1e-12)


def test_energy_per_image(zc706):
    est = fpga_scaling(zc706, 1)
    assert est.energy_per_image_j == pytest.approx(3.6 / 21900, rel=1e-12)
    assert est.to_dict()["energy_per_image_j"] == est.energy_per_image_j


@pytest.mark.parametrize("bits", [0, 0.5, 8.5, 9, -1, math.nan, math.inf, True, "2", None])
def test_bits_out_of_range(zc706, asic, bits):
    with pytest.raises(ConfigError, match="bits"):
        fpga_scaling(zc706, bits)
    with pytest.raises(ConfigError, match="bits"):
        asic_scaling(asic, bits)


@pytest.mark.parametrize("kwargs", [{"unfolding": 0}, {"unfolding": -2}, {"op_ratio": 0}, {"op_ratio": -1.0}])
def test_non_positive_numbers(zc706, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ConfigError, match=f"{name}: expected a number > 0"):
        fpga_scaling(zc706, 1, **kwargs)


def test_bits_limits_are_inclusive(zc706):
    assert fpga_scaling(zc706, 1).bits == 1 and fpga_scaling(zc706, 8).bits == 8


def test_wrong_platform_kind(zc706, asic):
    with pytest.raises(ConfigError, match="ASIC"):
        fpga_scaling(asic, 1)
    with pytest.raises(ConfigError, match="FPGA"):
        asic_scaling(zc706, 1)
    with pytest.raises(ConfigError, match="unfolding: applies to FPGA"):
        scale(asic, 2, unfolding=2)
    assert scale(asic, 2, unfolding=1).area_mm2 == pytest.approx(6.06)
