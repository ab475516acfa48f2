"""The FINN-style dataflow model: folding constraints, slowest-layer throughput, LUT budget."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hbnn.errors import ConfigError
from hbnn.hw import calibrate_lut_per_lane, compare_table2, dataflow_estimate, load_catalog, workload_layers
from hbnn.hw.dataflow import LayerFold, fold_to_budget, layer_luts, luts_for_kfps
from hbnn.hw.platforms import DataflowConstants
from hbnn.hw.profile import LayerProfile

CONSTANTS = DataflowConstants(lut_per_lane=2.0, lut_per_pe=10.0, lut_per_layer=100.0, float_bits=8.0)


@pytest.fixture(scope="module")
def zc706():
    return load_catalog().platform("zc706")


@pytest.fixture(scope="module")
def cnv():
    return workload_layers("finn_cnv", 1)


def test_layer_luts_formula():
    layer = LayerProfile("l", "conv", 6, 12, 4, 2.0, 3.0, True)
    fold = LayerFold(layer, pe=3, simd=4)
    assert layer_luts(fold, CONSTANTS) == 3 * 4 * 2.0 * 2 * 3 + 3 * 10.0 + 100.0
    assert fold.cycles == (6 // 3) * (12 // 4) * 4 == layer.macs // 12
    float_layer = replace(layer, wbits=32.0, abits=32.0, quantized=False)
    assert layer_luts(LayerFold(float_layer), CONSTANTS) == 2.0 * 8 * 8 + 10 + 100


def test_lane_cost_grows_with_the_bit_product():
    bits = [(1, 1), (1, 2), (2, 2), (3, 2)]
    costs = [layer_luts(LayerFold(LayerProfile("l", "linear", 4, 4, 1, w, a, True), 2, 2), CONSTANTS) for w, a in bits]
    assert costs == sorted(costs) and len(set(costs)) == 4


def test_folding_constraints_and_cycles(zc706, cnv):
    est = dataflow_estimate(zc706, cnv, lut_budget=0.5)
    for fold in est.folds:
        assert fold.layer.rows % fold.pe == 0 and fold.layer.cols % fold.simd == 0
        assert fold.cycles * fold.pe * fold.simd == fold.layer.macs
    assert est.luts <= est.lut_budget
    assert est.luts == pytest.approx(sum(layer_luts(f, zc706.dataflow) for f in est.folds))


def test_slowest_layer_sets_throughput(zc706, cnv):
    est = dataflow_estimate(zc706, cnv, lut_budget=0.3)
    slowest = max(est.folds, key=lambda f: f.cycles)
    assert est.cycles == slowest.cycles and est.bottleneck == slowest.layer.name
    assert est.kfps == pytest.approx(zc706.clock_mhz * 1e3 / slowest.cycles)
    assert est.energy_per_image_j == pytest.approx(est.watts / (est.kfps * 1e3))


@pytest.mark.parametrize("bits", [1, 1.4, 2])
def test_more_budget_never_lowers_throughput(zc706, bits):
    layers = workload_layers("finn_cnv", bits)
    budgets = [0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0]
    kfps = [dataflow_estimate(zc706, layers, lut_budget=b).kfps for b in budgets]
    assert kfps == sorted(kfps)
    assert kfps[-1] > kfps[0]


def test_more_bits_never_raise_throughput_at_a_fixed_budget(zc706):
    kfps = [dataflow_estimate(zc706, workload_layers("finn_cnv", b), lut_budget=0.3).kfps for b in (1, 1.4, 2, 3)]
    assert kfps == sorted(kfps, reverse=True)


def test_fully_unfolded_net_stops_and_says_so(zc706):
    tiny = [LayerProfile("a", "linear", 2, 2, 1, 1.0, 1.0, True)]
    est = dataflow_estimate(zc706, tiny, lut_budget=1.0)
    assert (est.folds[0].pe, est.folds[0].simd, est.cycles) == (2, 2, 1)
    assert "fully unfolded" in est.notes[0]


def test_budget_errors(zc706, cnv):
    with pytest.raises(ConfigError, match="even fully folded"):
        dataflow_estimate(zc706, cnv, lut_budget=0.001)
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="lut_budget"):
            dataflow_estimate(zc706, cnv, lut_budget=bad)
    assert fold_to_budget(cnv, CONSTANTS, 10) is None
    with pytest.raises(ConfigError, match="no nn.Conv2d"):
        fold_to_budget([], CONSTANTS, 1e6)


def test_asic_has_no_dataflow(cnv):
    with pytest.raises(ConfigError, match="no dataflow constants"):
        dataflow_estimate(load_catalog().platform("alemdar2017"), cnv)


def test_luts_for_kfps_is_consistent_with_the_budget_search(zc706, cnv):
    need = luts_for_kfps(cnv, zc706.dataflow, zc706.clock_mhz, 21.9)
    assert dataflow_estimate(zc706, cnv, lut_budget=need / zc706.device_luts).kfps >= 21.9
    assert luts_for_kfps(cnv, zc706.dataflow, zc706.clock_mhz, 1e9) is None


def test_packaged_constant_is_calibrated_on_the_baseline(zc706, cnv):
    calibrated = calibrate_lut_per_lane(zc706, cnv)
    assert zc706.dataflow.lut_per_lane <= calibrated < zc706.dataflow.lut_per_lane * 1.05
    est = dataflow_estimate(zc706, cnv, lut_budget=zc706.baseline.occupancy)
    assert est.kfps >= zc706.baseline.kfps
    assert est.watts == pytest.approx(zc706.baseline.watts * est.occupancy / zc706.baseline.occupancy)


def test_compare_table2_rows(zc706):
    rows = compare_table2()
    assert [r["row"] for r in rows] == [1, 2, 4, 5, 6, 9, 10, 11]
    for r in rows:
        assert r["dataflow"]["occupancy"] <= min(r["scaling"]["occupancy"], 1.0) + 1e-12
        assert r["kfps_ratio"] == pytest.approx(r["dataflow"]["kfps"] / r["scaling"]["kfps"])
    mobilenet = [r for r in rows if r["model"] == "MobileNet"]
    # The paper's 49x is (224/32)^2; counted MACs give 9.56x, so the dataflow model is faster.
    assert all(r["macs_ratio"] == pytest.approx(9.565, abs=1e-3) and r["kfps_ratio"] > 3 for r in mobilenet)
