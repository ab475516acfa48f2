"""Quantizer modules: per-forward maps in training, cached/calibrated maps at inference."""

import pytest
import torch

from hbnn.errors import ConfigError
from hbnn.quant import ActQuantizer, QuantSpec, WeightQuantizer, hetero_binarize, make_bitmap
from hbnn.quant.config import LayerQuant

EXACT = dict(atol=0, rtol=0)


def test_weight_quantizer_equals_functional():
    w = torch.randn(16, 8, 3, 3)
    q = WeightQuantizer(QuantSpec(bits=1.4))
    torch.testing.assert_close(q(w), hetero_binarize(w, make_bitmap(w, 1.4)), **EXACT)
    assert q.realized_bits() == pytest.approx(make_bitmap(w, 1.4).float().mean().item())


def test_weight_quantizer_per_channel_and_block():
    w = torch.randn(16, 8, 3, 3)
    q = WeightQuantizer(QuantSpec(bits=1.4, per_channel=True, block=8, heuristic="top_down"))
    m = make_bitmap(w, 1.4, "top_down", block=8)
    torch.testing.assert_close(q(w), hetero_binarize(w, m, channel_dim=0), **EXACT)


def test_weight_map_recomputed_each_training_step_and_cached_in_eval():
    w = torch.nn.Parameter(torch.randn(64, 64))
    q = WeightQuantizer(1.4)
    q.eval()
    first = q._current_bitmap(w)
    assert q._current_bitmap(w) is first  # cached while the weight is unchanged
    with torch.no_grad():
        w.mul_(torch.randn(64, 64))
    second = q._current_bitmap(w)
    assert second is not first and torch.equal(second, make_bitmap(w.detach(), 1.4))
    q.train()
    assert q._current_bitmap(w) is not q._current_bitmap(w)


def test_weight_quantizer_gradient_is_clipped_ste():
    w = torch.nn.Parameter(torch.randn(10, 10) * 1.5)
    g = torch.randn(10, 10)
    (WeightQuantizer(1.4)(w) * g).sum().backward()
    torch.testing.assert_close(w.grad, g * (w.detach().abs() <= 1), **EXACT)


def test_random_heuristic_uses_spec_seed():
    w = torch.randn(100)
    a = WeightQuantizer(QuantSpec(bits=1.4, heuristic="random", seed=3)).bitmap(w)
    b = make_bitmap(w, 1.4, "random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def _train(q, batches):
    q.train()
    for x in batches:
        q(x)


def test_act_training_uses_batch_statistics():
    x = torch.randn(8, 4, 5, 5)
    q = ActQuantizer(1.4)
    torch.testing.assert_close(q(x), hetero_binarize(x, make_bitmap(x, 1.4)), **EXACT)
    assert int(q.num_batches_tracked) == 1


def test_act_running_estimates_follow_ema():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 100, generator=g) * s for s in (1.0, 2.0, 3.0)]
    q = ActQuantizer(QuantSpec(bits=2, momentum=0.5))
    _train(q, xs)
    mu1 = [x.abs().mean() for x in xs]
    expected = (mu1[0] * 0.5 + mu1[1] * 0.5) * 0.5 + mu1[2] * 0.5
    torch.testing.assert_close(q.running_scales[0], expected.float(), rtol=1e-6, atol=0)


def test_act_eval_is_elementwise_and_matches_training_statistics_for_same_batch():
    x = torch.randn(32, 3, 4, 4)
    q = ActQuantizer(1.4)
    _train(q, [x])
    q.eval()
    full = q(x)
    # elementwise: one sample alone gives the same output as inside the batch
    torch.testing.assert_close(q(x[:1]), full[:1], **EXACT)
    # after one batch with momentum 1 (first batch), the map equals the batch map up to ties
    m = q.running_bitmap(x)
    assert torch.equal(m, make_bitmap(x, 1.4))
    assert q.realized_bits() == pytest.approx(1.4, abs=1e-3)


def test_act_eval_exact_mode_uses_per_input_statistics():
    x = torch.randn(16, 20)
    q = ActQuantizer(QuantSpec(bits=1.4, eval_mode="exact"))
    _train(q, [torch.randn(16, 20) * 5])
    q.eval()
    torch.testing.assert_close(q(x), hetero_binarize(x, make_bitmap(x, 1.4)), **EXACT)


@pytest.mark.parametrize("heuristic", ["middle_out", "top_down", "bottom_up", "random"])
def test_act_eval_mix_close_to_target(heuristic):
    q = ActQuantizer(QuantSpec(bits=1.4, heuristic=heuristic))
    g = torch.Generator().manual_seed(1)
    _train(q, [torch.randn(64, 256, generator=g) for _ in range(20)])
    q.eval()
    m = q.running_bitmap(torch.randn(64, 256, generator=g))
    assert abs(m.float().mean().item() - 1.4) < 0.03


def test_act_gradient():
    x = torch.randn(4, 10, requires_grad=True) * 2
    x.retain_grad()
    g = torch.randn(4, 10)
    (ActQuantizer(1.4)(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, g * (x.detach().abs() <= 1), **EXACT)


def test_eval_params_round_trip():
    q = ActQuantizer(1.4)
    _train(q, [torch.randn(8, 8)])
    p = q.eval_params()
    assert p["bits"] == [1, 2, 3] and len(p["thresholds"]) == 2 and len(p["scales"]) == 3


def test_state_dict_round_trip():
    q = ActQuantizer(1.4)
    _train(q, [torch.randn(8, 8)])
    r = ActQuantizer(1.4)
    r.load_state_dict(q.state_dict())
    q.eval(), r.eval()
    x = torch.randn(3, 8)
    torch.testing.assert_close(q(x), r(x), **EXACT)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(heuristic="up"), "heuristic: invalid value 'up'; allowed: middle_out, top_down, bottom_up, random"),
        (dict(block=0), "block: invalid value 0"),
        (dict(eval_mode="fast"), "eval_mode: invalid value 'fast'; allowed: running, exact"),
        (dict(momentum=0), "momentum"),
        (dict(bits=1.25), "average"),
        (dict(bits={1: 0.5, 2: 0.6}), "sum to 1"),
        (dict(per_channel="yes"), "per_channel"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantSpec(**kwargs)


def test_spec_round_trip():
    spec = QuantSpec(bits="80/0/20", heuristic="bottom_up", block=64, per_channel=True)
    again = QuantSpec.from_dict(spec.to_dict())
    assert again == spec
    assert QuantSpec.from_dict(1.4) == QuantSpec(bits=1.4)
    with pytest.raises(ConfigError, match="unknown key bitz; allowed in QuantSpec: bits, heuristic"):
        QuantSpec.from_dict({"bitz": 1})


def test_layer_quant_round_trip_and_errors():
    lq = LayerQuant(weight=1.4, act={"bits": 2}, output_scale=True)
    assert LayerQuant.from_dict(lq.to_dict()) == lq
    with pytest.raises(ConfigError, match="act.block"):
        LayerQuant(act={"bits": 1.4, "block": 4})
    with pytest.raises(ConfigError, match="unknown key weights; allowed in LayerQuant: weight, act"):
        LayerQuant.from_dict({"weights": 1})


@pytest.mark.parametrize("heuristic", ["middle_out", "top_down", "bottom_up"])
def test_act_sampled_selection_close_to_exact(heuristic):
    x = torch.randn(64, 16, 12, 12, generator=torch.Generator().manual_seed(5))
    exact = ActQuantizer(QuantSpec(bits=1.4, heuristic=heuristic))._select(x)[0]
    sampled, thresholds, _ = ActQuantizer(QuantSpec(bits=1.4, heuristic=heuristic, select="sampled"))._select(x)
    assert len(thresholds) == 2 and sampled.shape == x.shape
    for b, p in zip((1, 2, 3), (0.7, 0.2, 0.1)):
        assert abs((sampled == b).float().mean().item() - p) < 0.01
    # Both maps rank by the same key, so they agree except near the cut thresholds.
    assert (sampled == exact).float().mean().item() > 0.97


def test_threshold_selection_gives_ties_the_lower_bitwidth():
    # Clipped activations tie massively at |x| = 1; a threshold cannot split a tie, so the
    # whole tie gets the lower bitwidth (exact selection splits it by index instead).
    x = torch.nn.functional.hardtanh(torch.randn(64, 16, 12, 12, generator=torch.Generator().manual_seed(5)) * 3)
    sampled, thresholds, _ = ActQuantizer(QuantSpec(bits=1.4, heuristic="bottom_up", select="sampled"))._select(x)
    assert thresholds == [1.0, 1.0]
    assert torch.equal(sampled, torch.ones_like(sampled))


def test_sampled_selection_small_tensor_is_exact():
    x = torch.randn(100, 10)
    exact = ActQuantizer(1.4)._select(x)[0]
    sampled = ActQuantizer(QuantSpec(bits=1.4, select="sampled"))._select(x)[0]
    assert torch.equal(exact, sampled)


def test_select_validation():
    with pytest.raises(ConfigError, match="select: invalid value 'fast'; allowed: exact, sampled"):
        QuantSpec(select="fast")
    with pytest.raises(ConfigError, match="weight.select"):
        LayerQuant(weight={"bits": 1.4, "select": "sampled"})
