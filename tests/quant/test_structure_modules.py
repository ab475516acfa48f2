"""Structured maps in the quantizer modules: training, inference, caching, STE, eval params."""

import pytest
import torch

from hbnn.errors import ConfigError
from hbnn.quant import ActQuantizer, BitMix, QuantSpec, WeightQuantizer, hetero_binarize
from hbnn.quant.functional import binarize_with_scales
from hbnn.quant.keys import heuristic_key
from hbnn.quant.bitmap import map_from_thresholds
from hbnn.quant.structure import parse_structure, unit_bitmap

EXACT = dict(atol=0, rtol=0)
MIX = BitMix.from_average(1.4)


def _is_constant_per_unit(bitmap, structure, feature_dim=1):
    ids = structure.expand(torch.arange(structure.n_units(bitmap.shape, feature_dim)), bitmap.shape, feature_dim)
    first = torch.zeros(int(ids.max()) + 1, dtype=bitmap.dtype).scatter_(0, ids.reshape(-1), bitmap.reshape(-1))
    return torch.equal(first[ids], bitmap)


@pytest.mark.parametrize("spec", [
    dict(structure="block8"), dict(structure="channel"), dict(structure="block8", allocate="error"),
    dict(structure="channel", allocate="error", per_channel=True), dict(structure="entry", allocate="error"),
    dict(structure="block8", heuristic="random", seed=4),
])
def test_weight_quantizer_uses_the_unit_map(spec):
    w = torch.randn(12, 4, 3, 3)
    q = WeightQuantizer(QuantSpec(bits=1.4, **spec))
    s = parse_structure(spec["structure"])
    cdim = 0 if spec.get("per_channel") else None
    gen = torch.Generator().manual_seed(4) if spec.get("heuristic") == "random" else None
    units = unit_bitmap(w, MIX, s, spec.get("heuristic", "middle_out"), spec.get("allocate", "key"), gen, cdim)
    bitmap = units.expand()
    torch.testing.assert_close(q(w), hetero_binarize(w, bitmap, channel_dim=cdim), **EXACT)
    assert torch.equal(q.bitmap(w), bitmap) and torch.equal(q.unit_map(w).bits, units.bits)
    assert float(q.realized) == pytest.approx(float(bitmap.float().mean()), abs=1e-7)
    assert _is_constant_per_unit(bitmap, s)
    assert f"structure={spec['structure']}" in repr(q) or spec["structure"] == "entry"


def test_weight_structure_gradient_is_the_clipped_ste_and_eval_caches():
    w = torch.nn.Parameter(torch.randn(8, 16) * 1.5)
    g = torch.randn(8, 16)
    q = WeightQuantizer(QuantSpec(bits=1.4, structure="block4", allocate="error"))
    (q(w) * g).sum().backward()
    torch.testing.assert_close(w.grad, g * (w.detach().abs() <= 1), **EXACT)
    q.eval()
    first = q._current_bitmap(w)
    assert q._current_bitmap(w) is first


def test_quantizers_refuse_the_other_role():
    with pytest.raises(ConfigError, match=r"^weight.structure: invalid value 'pixel'"):
        WeightQuantizer(QuantSpec(bits=1.4, structure="pixel"))
    with pytest.raises(ConfigError, match=r"^act.structure: invalid value 'block8'"):
        ActQuantizer(QuantSpec(bits=1.4, structure="block8"))
    with pytest.raises(ConfigError, match=r"^act.allocate: invalid value 'error'"):
        ActQuantizer(QuantSpec(bits=1.4, allocate="error"))


@pytest.mark.parametrize("name", ["pixel", "group4", "group3"])
@pytest.mark.parametrize("heuristic", ["middle_out", "top_down"])
def test_act_training_selects_units_and_running_map_uses_unit_keys(name, heuristic):
    s = parse_structure(name)
    q = ActQuantizer(QuantSpec(bits=1.4, structure=name, heuristic=heuristic))
    x = torch.randn(4, 8, 5, 5)
    q.train()
    out = q(x)
    units = unit_bitmap(x, MIX, s, heuristic)
    torch.testing.assert_close(out, hetero_binarize(x, units.expand()), **EXACT)
    assert [int((units.bits == b).sum()) for b in MIX.bits] == list(MIX.counts(s.n_units(x.shape)))
    assert float(q.running_bits) == pytest.approx(float(units.expand().float().mean()), abs=1e-7)
    # inference: the unit key at the running mean magnitude against the running thresholds
    q.eval()
    y = torch.randn(2, 8, 5, 5)
    mean_abs = q.running_mean_abs if heuristic == "middle_out" else None
    keys = s.unit_means(heuristic_key(y, heuristic, mean_abs))
    want = s.expand(map_from_thresholds(keys, MIX, q.running_thresholds.tolist()), y.shape)
    assert torch.equal(q.running_bitmap(y), want) and _is_constant_per_unit(want, s)
    torch.testing.assert_close(q(y), binarize_with_scales(y, want, q.running_scales), **EXACT)
    # the running map of a batch it was trained on reproduces the training map (distinct unit keys)
    assert torch.equal(q.running_bitmap(x), units.expand())
    assert q.eval_params()["structure"] == name


def test_act_running_map_on_the_engines_rows_view():
    q = ActQuantizer(QuantSpec(bits=1.4, structure="group4"))
    q.train()
    q(torch.randn(4, 8, 5, 5))
    q.eval()
    x = torch.randn(2, 8, 3, 3)
    rows = x.permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(q.running_bitmap(rows), q.running_bitmap(x).permute(0, 2, 3, 1).reshape(-1, 8))


def test_act_groups_on_linear_inputs_with_leading_dims():
    q = ActQuantizer(QuantSpec(bits=1.4, structure="group4"), feature_dim=-1)
    x = torch.randn(3, 5, 8)
    q.train()
    q(x)
    m = unit_bitmap(x, MIX, parse_structure("group4"), feature_dim=-1).expand()
    assert torch.equal(m.reshape(15, 2, 4), m.reshape(15, 2, 4)[:, :, :1].expand(15, 2, 4))
    q.eval()
    assert torch.equal(q.running_bitmap(x).reshape(15, 8), q.running_bitmap(x.reshape(15, 8)))


def test_act_sampled_and_random_and_exact_modes():
    x = torch.randn(64, 16, 8, 8)  # 65536 pixels > 16384: thresholds from a sample of units
    s = parse_structure("pixel")
    q = ActQuantizer(QuantSpec(bits=1.4, structure="pixel", select="sampled"))
    q.train()
    q(x)
    counts = [int((q.running_bitmap(x) == b).sum()) // 16 for b in MIX.bits]
    n = s.n_units(x.shape)
    assert sum(counts) == n and all(abs(c - e) <= 0.01 * n for c, e in zip(counts, MIX.counts(n)))
    r = ActQuantizer(QuantSpec(bits=1.4, structure="group8", heuristic="random", seed=2))
    r.train()
    r(x[:2])
    r.eval()
    m = r.running_bitmap(x[:2])
    assert torch.equal(m, unit_bitmap(x[:2], MIX, parse_structure("group8"), "random",
                                      generator=torch.Generator().manual_seed(2)).expand())
    e = ActQuantizer(QuantSpec(bits=1.4, structure="group8", eval_mode="exact"))
    e.train()
    e(x[:2])
    e.eval()
    torch.testing.assert_close(e(x[2:4]), hetero_binarize(x[2:4], unit_bitmap(x[2:4], MIX, parse_structure("group8"))
                                                            .expand()), **EXACT)


def test_act_structure_gradient_is_the_clipped_ste():
    x = (torch.randn(2, 8, 3, 3) * 2).requires_grad_()
    g = torch.randn(2, 8, 3, 3)
    (ActQuantizer(QuantSpec(bits=1.4, structure="pixel"))(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, g * (x.detach().abs() <= 1), **EXACT)


def test_entry_running_map_is_unchanged_and_eval_params_name_it():
    q = ActQuantizer(1.4)
    q.train()
    q(torch.randn(8, 32))
    q.eval()
    x = torch.randn(4, 32)
    key = heuristic_key(x, "middle_out", q.running_mean_abs)
    assert torch.equal(q.running_bitmap(x), map_from_thresholds(key, MIX, q.running_thresholds.tolist()))
    assert q.eval_params()["structure"] == "entry"
