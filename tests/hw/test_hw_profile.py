"""Per-layer op counting through forward hooks, bits from hbnn layers, and the §4.5 op view."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hbnn.errors import ConfigError
from hbnn.hw import LayerProfile, op_view, profile_model, workload_layers
from hbnn.hw.profile import quantized_bits
from hbnn.hw.workloads import finn_cnv, mobilenet_v1_224


def test_macs_of_a_known_net_are_exact(tiny_net):
    layers = profile_model(tiny_net, (3, 8, 8))
    assert [(p.name, p.kind, p.rows, p.cols, p.pixels) for p in layers] == [
        ("conv", "conv", 8, 27, 64),
        ("dw", "conv", 8, 9, 16),
        ("fc", "linear", 10, 128, 1),
    ]
    assert [p.macs for p in layers] == [13824, 1152, 1280]
    assert [p.weights for p in layers] == [m.weight.numel() for m in (tiny_net.conv, tiny_net.dw, tiny_net.fc)]


def test_bits_come_from_the_quantizers(tiny_net):
    conv, dw, fc = profile_model(tiny_net, (3, 8, 8))
    assert (conv.wbits, conv.abits, conv.quantized) == (32.0, 32.0, False)
    assert (dw.wbits, dw.abits, dw.quantized) == (2.0, 2.0, True)
    assert (fc.wbits, fc.abits, fc.quantized) == (1.5, 1.5, True)
    assert fc.weight_bits == 1280 * 1.5


def test_weight_only_layer_is_not_quantized(attach_quantizers, fake_quantizer):
    model = attach_quantizers(nn.Linear(4, 3), 1, None)
    (p,) = profile_model(model, (4,))
    assert (p.wbits, p.abits, p.quantized) == (1.0, 32.0, False)


def test_tensor_bits_and_mix_fallback(attach_quantizers, fake_quantizer):
    class Mix:
        average = 1.4

    model = nn.Linear(4, 3)
    model.weight_quantizer = fake_quantizer(torch.tensor(2.0))
    model.act_quantizer = fake_quantizer(None, mix=Mix())
    (p,) = profile_model(model, (4,))
    assert (p.wbits, p.abits) == (2.0, 1.4)


def test_quantizer_without_bits_is_an_error(fake_quantizer):
    model = nn.Linear(4, 3)
    model.weight_quantizer = fake_quantizer(None)
    with pytest.raises(ConfigError, match="reports no bits"):
        profile_model(model, (4,))
    model.weight_quantizer = fake_quantizer(9.0)
    with pytest.raises(ConfigError, match="bits"):
        profile_model(model, (4,))


def test_reused_module_and_sequence_dims():
    fc = nn.Linear(6, 6)
    model = nn.Sequential(fc, nn.ReLU(), fc)
    layers = profile_model(model, (5, 6))  # 5 positions per sample
    assert [p.name for p in layers] == ["0", "0#1"]
    assert [p.pixels for p in layers] == [5, 5]
    assert layers[0].macs == 6 * 6 * 5


def test_model_state_is_restored(tiny_net):
    tiny_net.train()
    profile_model(tiny_net, (3, 8, 8))
    assert tiny_net.training
    assert all(not m._forward_hooks for m in tiny_net.modules())


@pytest.mark.parametrize("shape", [(), (3, 0, 8), (-1, 4)])
def test_bad_input_shape(tiny_net, shape):
    with pytest.raises(ConfigError, match="input_shape"):
        profile_model(tiny_net, shape)


def test_real_hb_layers_report_their_bits():
    from hbnn.nn import HBConv2d

    conv = HBConv2d.from_float(nn.Conv2d(4, 8, 3), {"weight": 1.4, "act": 2})
    (p,) = profile_model(conv, (4, 6, 6))
    assert p.quantized and p.abits == 2.0
    assert p.wbits == pytest.approx(1.4, abs=0.02)  # the realized bit map of 288 weights


def test_quantized_bits_is_the_mac_weighted_geometric_mean():
    a = LayerProfile("a", "linear", 10, 10, 1, 1.0, 4.0, True)  # 100 MACs, sqrt(4) = 2
    b = LayerProfile("b", "linear", 30, 10, 1, 1.0, 1.0, True)  # 300 MACs, 1
    f = LayerProfile("f", "linear", 50, 10, 1)  # float: ignored
    assert quantized_bits([a, b, f]) == pytest.approx((100 * 2 + 300 * 1) / 400)
    assert quantized_bits([f]) is None


def test_op_view_speedups():
    one = LayerProfile("one", "linear", 8, 8, 1, 1.0, 1.0, True)  # 64 MACs
    two = LayerProfile("two", "linear", 8, 8, 1, 2.0, 2.0, True)
    flt = LayerProfile("flt", "linear", 8, 8, 1)
    view = op_view([one, two, flt])
    assert [r["speedup"] for r in view["layers"]] == [64.0, 16.0, 1.0]
    assert [r["passes_per_mac"] for r in view["layers"]] == [1.0, 4.0, None]
    assert view["binary_passes"] == 64 * 1 + 64 * 4
    assert view["word_ops"] == 1 + 4 + 64
    assert view["float_macs"] == 64
    assert view["speedup"] == pytest.approx(192 / 69)


def test_builtin_layer_tables_match_published_counts():
    assert sum(p.macs for p in finn_cnv()) == 59_461_376
    assert sum(p.weights for p in finn_cnv()) == 1_542_848  # as hbnn.models.vgg8_cnv documents for K=10
    mobilenet = mobilenet_v1_224()
    assert sum(p.macs for p in mobilenet) == 568_740_352  # Howard et al.: 569 M mult-adds
    assert sum(p.weights for p in mobilenet) == 4_209_088  # Howard et al.: 4.2 M parameters


def test_workload_layers_bits():
    layers = workload_layers("finn_cnv", 1.4, 2)
    assert (layers[0].wbits, layers[0].abits, layers[0].quantized) == (1.4, 8.0, False)
    assert all((p.wbits, p.abits, p.quantized) == (1.4, 2.0, True) for p in layers[1:])
    assert quantized_bits(layers) == pytest.approx(math.sqrt(2.8))
    with pytest.raises(ConfigError, match="known: finn_cnv, mobilenet_v1_224"):
        workload_layers("resnet")
    with pytest.raises(ConfigError, match="wbits"):
        workload_layers("finn_cnv", 0)


def test_builtin_cnv_matches_the_registry_model():
    from hbnn.models import build_model

    model = build_model("vgg8_cnv", num_classes=10, in_channels=3, image_size=32)
    ours = [(p.rows, p.cols, p.pixels) for p in profile_model(model, (3, 32, 32))]
    assert ours == [(p.rows, p.cols, p.pixels) for p in finn_cnv()]
