"""HB layers against their float twins fed pre-binarized tensors."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hbnn.errors import ConfigError
from hbnn.nn import HBConv2d, HBLinear
from hbnn.quant import QuantSpec, hetero_binarize, make_bitmap

EXACT = dict(atol=0, rtol=0)


@pytest.mark.parametrize("hb,base", [(HBConv2d, nn.Conv2d), (HBLinear, nn.Linear)])
def test_signature_is_float_layer_plus_keyword_only(hb, base):
    hb_params = list(inspect.signature(hb.__init__).parameters.values())
    base_params = list(inspect.signature(base.__init__).parameters.values())
    assert [(p.name, p.default) for p in hb_params[: len(base_params)]] == [(p.name, p.default) for p in base_params]
    extra = hb_params[len(base_params) :]
    assert [p.name for p in extra] == ["weight_quant", "act_quant", "output_scale"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra)
    assert issubclass(hb, base)


def test_conv_equals_float_twin_with_prebinarized_tensors():
    torch.manual_seed(0)
    layer = HBConv2d(4, 8, 3, padding=1, stride=2, weight_quant=1.4, act_quant=2)
    x = torch.randn(2, 4, 9, 9)
    w_hat = hetero_binarize(layer.weight.detach(), make_bitmap(layer.weight.detach(), 1.4))
    x_hat = hetero_binarize(x, make_bitmap(x, 2))
    twin = layer.to_float()
    twin.weight = nn.Parameter(w_hat)  # not copy_: the twin shares layer's Parameter
    torch.testing.assert_close(layer(x), twin(x_hat), **EXACT)
    torch.testing.assert_close(layer(x), F.conv2d(x_hat, w_hat, layer.bias, 2, 1), **EXACT)


def test_linear_equals_float_twin_with_prebinarized_tensors_and_output_scale():
    layer = HBLinear(20, 5, weight_quant=QuantSpec(bits=1.4, per_channel=True), act_quant=1, output_scale=True)
    with torch.no_grad():
        layer.output_scale.fill_(0.5)
    x = torch.randn(3, 20)
    w = layer.weight.detach()
    w_hat = hetero_binarize(w, make_bitmap(w, 1.4), channel_dim=0)
    x_hat = hetero_binarize(x, make_bitmap(x, 1))
    torch.testing.assert_close(layer(x), 0.5 * F.linear(x_hat, w_hat, layer.bias), **EXACT)


def test_gradients_flow_to_latent_weights_and_output_scale():
    layer = HBLinear(6, 3, weight_quant=1.4, act_quant=1.4, output_scale=True)
    x = torch.randn(4, 6, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.output_scale.grad is not None and x.grad is not None
    # weight gradient = STE mask * (grad of F.linear wrt its weight argument)
    x_hat = layer.act_quantizer(x.detach())
    expected = (torch.ones(4, 3).T @ x_hat) * layer.output_scale.detach() * (layer.weight.detach().abs() <= 1)
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-6, atol=1e-6)


def test_from_float_to_float_round_trip():
    conv = nn.Conv2d(3, 6, (3, 5), stride=(1, 2), padding=(1, 2), dilation=1, groups=3, bias=False)
    hb = HBConv2d.from_float(conv, {"weight": 2})
    assert hb.weight is conv.weight and hb.bias is None and hb.groups == 3
    back = hb.to_float()
    assert type(back) is nn.Conv2d and torch.equal(back.weight, conv.weight)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(back(x), conv(x), **EXACT)


@pytest.mark.parametrize("make,hb", [(lambda: nn.Conv2d(2, 4, 3), HBConv2d), (lambda: nn.Linear(5, 3), HBLinear)])
def test_from_float_and_to_float_share_parameter_objects(make, hb):
    layer = make()
    weight, bias = layer.weight, layer.bias
    weight.requires_grad_(False)  # requires_grad travels with the object
    new = hb.from_float(layer, {"weight": 1.4, "output_scale": True})
    assert new.weight is weight and new.bias is bias and not new.weight.requires_grad
    assert [n for n, _ in new.named_parameters()] == ["weight", "bias", "output_scale"]
    assert list(new.state_dict())[:3] == ["weight", "bias", "output_scale"]
    back = new.to_float()
    assert type(back) is type(layer) and back.weight is weight and back.bias is bias
    assert [n for n, _ in back.named_parameters()] == ["weight", "bias"]


def test_optimizer_built_before_from_float_updates_binarized_weight():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    hb = HBLinear.from_float(lin, {"weight": 1.4, "act": 1})
    before = hb.weight.detach().clone()
    hb(torch.randn(4, 6)).square().sum().backward()
    opt.step()
    assert not torch.equal(hb.weight, before)
    assert hb.weight_quantizer.realized_bits() == pytest.approx(hb.weight_quantizer.realized_bits(hb.weight))


def test_from_float_rejects_non_parameter_weight():
    conv = nn.Conv2d(2, 4, 3)
    del conv.weight
    conv.weight = torch.zeros(4, 2, 3, 3)  # a plain tensor attribute, not a Parameter
    with pytest.raises(ConfigError, match="weight: a Tensor is not allowed"):
        HBConv2d.from_float(conv, {"weight": 1})


def test_no_quantizers_is_exactly_float():
    lin = nn.Linear(5, 4)
    hb = HBLinear.from_float(lin, {})
    x = torch.randn(2, 5)
    torch.testing.assert_close(hb(x), lin(x), **EXACT)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtypes(dtype):
    layer = HBConv2d(2, 4, 3, weight_quant=1.4, act_quant=1.4, dtype=dtype)
    y = layer(torch.randn(2, 2, 6, 6, dtype=dtype))
    assert y.dtype == dtype and torch.isfinite(y.float()).all()


def test_layer_quant_property():
    layer = HBConv2d(2, 4, 3, weight_quant=1.4)
    assert layer.layer_quant.weight == QuantSpec(bits=1.4) and layer.layer_quant.act is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda():
    layer = HBConv2d(2, 4, 3, weight_quant=1.4, act_quant=1.4).cuda()
    y = layer(torch.randn(2, 2, 6, 6, device="cuda"))
    assert y.is_cuda
