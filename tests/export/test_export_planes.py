"""Bit-exact pieces: stream codes, weight planes, activation planes and maps, per-layer outputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from hbnn.errors import FormatError
from hbnn.export import PackedLayer, PackedLinear, export_model, load
from hbnn.export import encode
from hbnn.export.engine import make_act_quantizer
from hbnn.kernels import pack_conv_weight
from hbnn.nn import HBConv2d
from hbnn.quant.bitmap import expand_blocks, heuristic_key, map_from_thresholds
from hbnn.quant.functional import binarize_planes, dequantize_planes, residual_forward

EXACT = dict(atol=0, rtol=0)


@pytest.mark.parametrize("n_levels", [1, 2, 3, 4])
def test_nested_level_code_round_trips(n_levels):
    gen = torch.Generator().manual_seed(n_levels)
    levels = torch.randint(0, n_levels, (1000,), generator=gen)
    stream = encode.encode_levels(levels, n_levels)
    expected = sum(int((levels >= k - 1).sum()) for k in range(1, n_levels))  # unary code length
    assert stream.numel() == expected
    words = encode.pack_stream(stream)
    assert words.shape == (encode.stream_words(expected),)
    back = encode.decode_levels(encode.unpack_stream(words, expected, "t"), 1000, n_levels, "t")
    assert torch.equal(back, levels)


def test_level_code_example_and_bad_lengths():
    assert encode.encode_levels(torch.tensor([0, 2, 1, 0]), 3).int().tolist() == [0, 1, 1, 0, 1, 0]
    with pytest.raises(FormatError, match="too short"):
        encode.decode_levels(torch.tensor([True, True]), 4, 3, "t")
    with pytest.raises(FormatError, match="the code uses"):
        encode.decode_levels(torch.zeros(5, dtype=torch.bool), 4, 3, "t")
    with pytest.raises(FormatError, match="expected int64"):
        encode.unpack_stream(torch.zeros(3, dtype=torch.int64), 64, "t")


@pytest.mark.parametrize("block", [1, 3, 8])
def test_block_units_round_trip(block):
    gen = torch.Generator().manual_seed(block)
    units = torch.randint(0, 3, (5 * -(-20 // block),), generator=gen)
    levels = expand_blocks(units, (5, 4, 5), block)  # rows of K = 20 entries
    bitmap = torch.tensor([1, 2, 3])[levels].to(torch.int8)
    assert torch.equal(encode.unit_levels(bitmap, (1, 2, 3), block), units)


def test_sign_stream_round_trips_over_masks():
    gen = torch.Generator().manual_seed(0)
    level = torch.randint(1, 4, (7, 9), generator=gen)
    masks = torch.stack([level > i for i in range(3)])
    signs = (torch.rand(3, 7, 9, generator=gen) > 0.5) & masks
    stream = encode.encode_signs(signs, masks)
    assert stream.numel() == int(level.sum())  # sum_j M_j bits: the average bitwidth times N
    assert torch.equal(encode.decode_signs(stream, masks, "t"), signs)


def _layers(model, engine):
    hb = [m for m in model.modules() if isinstance(m, HBConv2d)]
    packed = [m for m in engine.layers if isinstance(m, PackedLayer) and m.binary]
    return list(zip(hb, packed))


@pytest.mark.parametrize("weight", [1, 1.4, {"bits": 1.4, "per_channel": True}, {"bits": 1.4, "block": 4}])
def test_engine_planes_are_the_training_planes(weight, tmp_path, make_fc4):
    model = make_fc4({"weight": weight, "act": 1.4})
    export_model(model, tmp_path / "m.hbnn", input_shape=[1, 12, 12], fold_bn=False)
    engine = load(tmp_path / "m.hbnn")
    gen = torch.Generator().manual_seed(1)
    for hb, layer in _layers(model, engine):
        wq = hb.weight_quantizer
        bitmap = None if wq.mix.is_homogeneous else wq.bitmap(hb.weight)
        cdim = 0 if wq.spec.per_channel else None
        w_hat, scales, signs, masks = residual_forward(hb.weight.detach(), bitmap, wq.mix.max_bits, cdim,
                                                       keep_planes=True)
        torch.testing.assert_close(layer.weight, w_hat, **EXACT)  # the float path's weight
        want = pack_conv_weight(signs & masks, masks, scales, backend="torch")
        assert torch.equal(layer.kernel_weight.signs, want.signs) and layer.kernel_weight.full == want.full
        if want.masks is not None:
            assert torch.equal(layer.kernel_weight.masks, want.masks)
        # Activations: the packed planes of an input equal the training quantizer's planes.
        x = torch.randn(4, hb.in_channels, 6, 6, generator=gen).clamp(-1, 1)
        aq = hb.act_quantizer
        a_bitmap = aq.running_bitmap(x)
        _, _, a_signs, a_masks = residual_forward(x, a_bitmap, aq.mix.max_bits, scales=aq.running_scales,
                                                  keep_planes=True)
        got_s, got_m, _ = layer.pack_input(x).unpack()  # [n, B, H, W, C]
        assert torch.equal(got_s, (a_signs & a_masks).permute(0, 1, 3, 4, 2))
        assert torch.equal(got_m, a_masks.permute(0, 1, 3, 4, 2))
        # One layer alone: the kernel output is the float conv of x_hat and w_hat up to summation order.
        with torch.no_grad():
            torch.testing.assert_close(layer(x), hb(x), atol=1e-5, rtol=1e-5)


# Dyadic running estimates, so inputs can put keys exactly on the thresholds: middle_out's key
# is ||x| - 0.5| and x = 0.75, 1.0 give 0.25, 0.5 exactly.
_TIES = {"middle_out": [0.25, 0.5], "top_down": [-1.0, -0.5], "bottom_up": [0.5, 1.0]}


@pytest.mark.parametrize("bits, heuristic", list(itertools.product([(1, 2, 3), (1, 3), (2, 4)], _TIES)))
def test_engine_map_is_the_quantizer_map_including_ties(bits, heuristic):
    fractions = [1 / len(bits)] * len(bits)
    thresholds = torch.tensor(_TIES[heuristic][: len(bits) - 1])
    act = make_act_quantizer(bits, fractions, heuristic, torch.tensor([0.8, 0.4, 0.2, 0.1])[: bits[-1]],
                             thresholds, torch.tensor(0.5))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 40, generator=gen)
    x.view(-1)[:8] = torch.tensor([0.75, -0.75, 1.0, -1.0, 0.5, -0.5, 0.25, -0.25])
    key = heuristic_key(x, heuristic, act.running_mean_abs)
    assert all(bool((key == t).any()) for t in thresholds.tolist())  # ties key == t_j present
    want = map_from_thresholds(key, act.mix, thresholds.tolist())  # the torch formula
    assert torch.equal(act.running_bitmap(x), want)  # the quantizer (fused C for float32 CPU)
    w_signs, w_masks, w_scales = binarize_planes(torch.randn(4, 40, generator=gen), torch.ones(4, 40, dtype=torch.int8))
    layer = PackedLinear(dequantize_planes(w_signs, w_masks, w_scales), (w_signs, w_masks, w_scales), act, None, None)
    assert layer.binary
    _, got_masks, _ = layer.pack_input(x).unpack()  # the engine packs its input at the same map
    assert torch.equal(got_masks, torch.stack([want > i for i in range(bits[-1])]))


@pytest.mark.parametrize("per_channel", [False, True])
def test_dequantized_planes_are_the_training_x_hat(per_channel):
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(6, 3, 3, 3, generator=gen)
    bitmap = torch.randint(1, 4, w.shape, generator=gen)
    cdim = 0 if per_channel else None
    x_hat, scales, signs, masks = residual_forward(w, bitmap, 3, cdim, keep_planes=True)
    torch.testing.assert_close(dequantize_planes(signs, masks, scales), x_hat, **EXACT)
    torch.testing.assert_close(dequantize_planes(*binarize_planes(w, bitmap, cdim)), x_hat, **EXACT)
