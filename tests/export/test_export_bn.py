"""Batch-norm folding: into float weights, into a binarized layer's output scale and bias, or kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hbnn.export import PackedLayer, export_model, load, read_packed
from hbnn.nn import HBConv2d, HBLinear


def _net(calibrated, gamma_sign: float = 1.0) -> nn.Module:
    """float conv -> BN -> HB conv (output scale, bias) -> BN -> ... -> HB linear -> BN1d; and a BN after a pool."""
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardtanh(),
        HBConv2d(8, 12, 3, padding=1, bias=True, weight_quant=1.4, act_quant=1.4, output_scale=True),
        nn.BatchNorm2d(12), nn.Hardtanh(), nn.MaxPool2d(2), nn.BatchNorm2d(12), nn.Hardtanh(),
        HBConv2d(12, 16, 3, stride=2, padding=1, bias=False, weight_quant={"bits": 2, "per_channel": True},
                 act_quant=1), nn.BatchNorm2d(16), nn.Hardtanh(), nn.Flatten(),
        HBLinear(16 * 2 * 2, 10, weight_quant=1, act_quant=2), nn.BatchNorm1d(10),
    )
    with torch.no_grad():
        model[3].output_scale.fill_(0.7)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5).mul_(gamma_sign)
                m.bias.uniform_(-0.3, 0.3)
    return calibrated(model, (2, 8, 8))


@pytest.mark.parametrize("gamma_sign", [1.0, -1.0])
def test_folded_and_unfolded_engines_match_the_model(gamma_sign, tmp_path, calibrated, parity):
    model = _net(calibrated, gamma_sign)
    x = torch.randn(32, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    for fold in (True, False):
        export_model(model, tmp_path / f"{fold}.hbnn", input_shape=[2, 8, 8], fold_bn=fold)
        engine = load(tmp_path / f"{fold}.hbnn")
        parity(ref, engine(x))
        assert sum(isinstance(m, PackedLayer) and m.binary for m in engine.layers) == 3
    header, _, _ = read_packed(tmp_path / "True.hbnn")
    ops = [r["op"] for r in header["layers"]]
    assert ops.count("batch_norm") == 1  # the BN after the pool has no layer to fold into
    assert [r["folded"] for r in header["layers"] if r["op"] in ("conv2d", "linear")] == [["1"], ["4"], ["10"], ["14"]]
    unfolded, _, _ = read_packed(tmp_path / "False.hbnn")
    assert [r["op"] for r in unfolded["layers"]].count("batch_norm") == 5


def test_fold_algebra_into_output_scale_and_bias(tmp_path, calibrated):
    model = _net(calibrated)
    export_model(model, tmp_path / "m.hbnn", input_shape=[2, 8, 8])
    _, tensors, _ = read_packed(tmp_path / "m.hbnn")
    hb, bn = model[3], model[4]
    a = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    c = bn.bias.double() - bn.running_mean.double() * a
    alpha = float(hb.output_scale.detach())
    torch.testing.assert_close(tensors["2.out_scale"], (alpha * a).float(), atol=0, rtol=0)
    torch.testing.assert_close(tensors["2.bias"], (alpha * a * hb.bias.double() + c).float(), atol=0, rtol=0)
    conv, bn0 = model[0], model[1]
    a0 = bn0.weight.double() / torch.sqrt(bn0.running_var.double() + bn0.eps)
    torch.testing.assert_close(tensors["0.weight"], (conv.weight.double() * a0[:, None, None, None]).float(),
                               atol=0, rtol=0)
    assert "0.out_scale" not in tensors  # a float layer takes the scale into its weights
