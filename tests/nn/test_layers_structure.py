"""Structured bit maps in HB layers: fit checks, quantize_, training steps, summary, recipes."""

import pytest
import torch
from torch import nn

import hbnn
from hbnn.errors import ConfigError
from hbnn.nn import HBConv2d, HBLinear
from hbnn.quant import BitMix, hetero_binarize
from hbnn.quant.structure import parse_structure, unit_bitmap
from hbnn.summary import format_summary, summarize
from hbnn.train.config import load_config

EXACT = dict(atol=0, rtol=0)
MIX = BitMix.from_average(1.4)


FIT_ERRORS = [
    (lambda: HBConv2d(3, 8, 3, weight_quant={"bits": 1.4, "structure": "block64"}),
     r"^weight.structure: block64 does not fit HBConv2d with weight \[8, 3, 3, 3\]: its rows have 27 inputs; "
     r"use block<K> with K <= 27, or channel$"),
    (lambda: HBLinear(10, 4, weight_quant={"bits": 1.4, "structure": "block16"}),
     r"^weight.structure: block16 does not fit HBLinear with weight \[4, 10\]: its rows have 10 inputs"),
    (lambda: HBLinear(10, 4, act_quant={"bits": 1.4, "structure": "pixel"}),
     r"^act.structure: pixel does not fit HBLinear with weight \[4, 10\]: pixel applies to conv inputs; "
     r"use group<G> with G <= 10 \(or group10 for one unit per sample\)$"),
    (lambda: HBConv2d(8, 8, 3, act_quant={"bits": 1.4, "structure": "group16"}),
     r"^act.structure: group16 does not fit HBConv2d with weight \[8, 8, 3, 3\]: its input has 8 channels; "
     r"use group<G> with G <= 8, or pixel$"),
    (lambda: HBLinear(6, 4, act_quant={"bits": 1.4, "structure": "group8"}),
     r"^act.structure: group8 does not fit HBLinear with weight \[4, 6\]: its input has 6 features; "
     r"use group<G> with G <= 6$"),
]


@pytest.mark.parametrize("build,message", FIT_ERRORS)
def test_fit_checks(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_fit_uses_grouped_conv_rows_and_allows_exact_fits():
    HBConv2d(8, 8, 3, groups=2, weight_quant={"bits": 1.4, "structure": "block36"})  # rows of 4 * 9
    with pytest.raises(ConfigError, match="its rows have 36 inputs"):
        HBConv2d(8, 8, 3, groups=2, weight_quant={"bits": 1.4, "structure": "block37"})
    HBConv2d(8, 8, 3, act_quant={"bits": 1.4, "structure": "group8"})
    HBLinear(6, 4, act_quant={"bits": 1.4, "structure": "group6"})


def test_quantize_names_the_layer_that_does_not_fit():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"^layer 1: weight.structure: block64 does not fit HBConv2d with weight "
                                          r"\[4, 8, 1, 1\]: its rows have 8 inputs; use block<K> with K <= 8"):
        hbnn.quantize_(net, {"default": {"weight": {"bits": 1.4, "structure": "block64"}}})


def _net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardtanh(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardtanh(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Hardtanh(),
        nn.Linear(32, 10),
    )


CASES = [  # (weight, conv input, linear input)
    ({"bits": 1.4, "structure": "block8"}, {"bits": 1.4, "structure": "pixel"}, {"bits": 1.4, "structure": "group8"}),
    ({"bits": 1.4, "structure": "block8", "allocate": "error"}, {"bits": 1.4, "structure": "group4"},
     {"bits": 1.4, "structure": "group5"}),
    ({"bits": 1.4, "structure": "channel"}, {"bits": 1.4, "structure": "group8", "select": "sampled"},
     {"bits": 1.4, "structure": "entry"}),
    ({"bits": 1.4, "structure": "channel", "allocate": "error"}, {"bits": 1.4, "structure": "entry"},
     {"bits": 1.4, "structure": "group64"}),
    ({"bits": 1.4, "structure": "entry", "allocate": "error"}, {"bits": 1.4, "structure": "group3"},
     {"bits": 1.4, "structure": "group1"}),
]


@pytest.mark.parametrize("weight,conv_act,lin_act", CASES)
def test_every_structure_trains_with_gradients(weight, conv_act, lin_act):
    torch.manual_seed(0)
    net = _net()
    hbnn.quantize_(net, {"default": {"weight": weight, "act": conv_act},
                         "rules": {"^8$": {"weight": weight, "act": lin_act}}})
    layers = [m for m in net.modules() if isinstance(m, (HBConv2d, HBLinear))]
    assert len(layers) == 2  # conv 3 and linear 8 (the first and last layers stay float)
    assert (layers[0].act_quantizer.feature_dim, layers[1].act_quantizer.feature_dim) == (1, -1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 10, (8,))
    before = [m.weight.detach().clone() for m in layers]
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        for m in layers:
            assert m.weight.grad is not None and bool(m.weight.grad.abs().sum() > 0)
        opt.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(b, m.weight) for b, m in zip(before, layers))
    for m in layers:  # the map is the structure's, the average within one unit of the target
        wq = m.weight_quantizer
        s = parse_structure(weight["structure"])
        units = unit_bitmap(m.weight.detach(), MIX, s, allocate=weight.get("allocate", "key"))
        assert torch.equal(wq.bitmap(m.weight), units.expand())
        n = s.n_units(m.weight.shape)
        assert abs(float(units.bits.float().mean()) - 1.4) <= 2 / n
        assert abs(float(m.act_quantizer.running_bits) - 1.4) < 0.2
    lin = layers[1]
    assert int(lin.act_quantizer.num_batches_tracked) == 3 and lin.act_quantizer.feature_dim == -1


def test_layer_output_equals_binarized_twin():
    layer = HBConv2d(4, 8, 3, padding=1, weight_quant={"bits": 1.4, "structure": "block12", "allocate": "error"},
                     act_quant={"bits": 1.4, "structure": "pixel"})
    x = torch.randn(2, 4, 5, 5)
    w = layer.weight.detach()
    w_hat = hetero_binarize(w, unit_bitmap(w, MIX, parse_structure("block12"), allocate="error").expand())
    x_hat = hetero_binarize(x, unit_bitmap(x, MIX, parse_structure("pixel")).expand())
    torch.testing.assert_close(layer(x), nn.functional.conv2d(x_hat, w_hat, layer.bias, padding=1), **EXACT)


def test_summary_shows_structures_and_unit_map_bits():
    net = _net()
    hbnn.quantize_(net, {"default": {"weight": {"bits": 1.4, "structure": "block8", "allocate": "error"},
                                     "act": {"bits": 1.4, "structure": "pixel"}},
                         "rules": {"^8$": {"weight": {"bits": 1.4, "structure": "channel"},
                                           "act": {"bits": 1.4, "structure": "group8"}}}})
    s = summarize(net)
    rec = {r["name"]: r for r in s["layers"]}
    assert (rec["3"]["weight_structure"], rec["3"]["act_structure"]) == ("block8+error", "pixel")
    assert (rec["8"]["weight_structure"], rec["8"]["act_structure"]) == ("channel", "group8")
    assert rec["0"]["weight_structure"] is None
    assert rec["3"]["map_bits"] == 16 * 9 * 2  # 16 rows of 72 inputs in 9 blocks, 2 bits per unit
    assert rec["8"]["map_bits"] == 32 * 2
    units = unit_bitmap(net[3].weight.detach(), MIX, parse_structure("block8"), allocate="error")
    assert rec["3"]["weight_bits"] == pytest.approx(float(units.expand().double().mean()), abs=1e-7)
    table = format_summary(s)
    assert "maps (w/a)" in table and "block8+error/pixel" in table and "channel/group8" in table
    plain = _net()
    hbnn.quantize_(plain, {"default": {"weight": 1.4}})
    assert "maps" not in format_summary(summarize(plain))  # per-entry maps: the table is unchanged


def test_recipe_and_set_overrides(tmp_path):
    recipe = tmp_path / "w.yaml"
    recipe.write_text("quant: {default: {weight: {bits: 1.4, structure: block64, allocate: error}}}\n")
    cfg = load_config(recipe)
    w = cfg.quant.default.weight
    assert (w.structure, w.allocate, w.mix) == ("block64", "error", MIX)
    cfg = load_config(recipe, ["quant.default.weight.structure=channel", "quant.default.act={bits: 1.4, "
                                                                          "structure: group8}"])
    assert (cfg.quant.default.weight.structure, cfg.quant.default.act.structure) == ("channel", "group8")
    with pytest.raises(ConfigError, match=r"^quant.default.act.structure: invalid value 'block8'"):
        load_config(recipe, ["quant.default.act={bits: 1.4, structure: block8}"])
    with pytest.raises(ConfigError, match=r"^quant.default.weight.structure: invalid value 'blocks'"):
        load_config(recipe, ["quant.default.weight.structure=blocks"])


def test_packed_export_keeps_structured_weights_and_acts(tmp_path):
    from hbnn.export import export_model, load

    def net(act):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardtanh(), nn.Conv2d(8, 8, 3, padding=1),
                              nn.Hardtanh(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
        hbnn.quantize_(model, {"default": {"weight": {"bits": 1.4, "structure": "block8", "allocate": "error"},
                                           "act": act}})
        model.train()(torch.randn(16, 3, 6, 6))
        return model.eval()

    model = net(1.4)
    export_model(model, tmp_path / "m.hbnn", input_shape=(3, 6, 6))
    packed = load(tmp_path / "m.hbnn")
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(packed(x), model(x), atol=1e-5, rtol=0)  # the block map travels as unit codes
    model = net({"bits": 1.4, "structure": "pixel"})  # packed format v3 records activation structures
    export_model(model, tmp_path / "p.hbnn", input_shape=(3, 6, 6))
    torch.testing.assert_close(load(tmp_path / "p.hbnn")(x), model(x), atol=1e-5, rtol=0)
