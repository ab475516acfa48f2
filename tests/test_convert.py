"""quantize_: rules, default policy, reports; summarize: exact stored sizes."""

import math
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from hbnn import quantize_, summarize
from hbnn.convert import QuantizeConfig, dequantize_
from hbnn.errors import ConfigError
from hbnn.models import build_model
from hbnn.nn import HBConv2d, HBLinear

W14A14 = {"default": {"weight": 1.4, "act": 1.4}}


def small_net():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Hardtanh(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.Hardtanh(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def test_default_policy_keeps_first_and_last_float():
    net = small_net()
    x = torch.randn(2, 1, 8, 8)
    report = quantize_(net, {"default": {"weight": 1.4, "act": 1.4}})
    assert list(report.converted) == ["3", "6"]
    assert report.kept_float == {"0": "first layer (keep_first)", "9": "last layer (keep_last)"}
    assert type(net[0]) is nn.Conv2d and isinstance(net[3], HBConv2d) and type(net[9]) is nn.Linear
    assert net(x).shape == (2, 10)


def test_rules_first_match_wins_and_unmatched_reported():
    net = small_net()
    cfg = {
        "default": {"weight": 1},
        "rules": {"^3$": {"weight": 2}, "^[36]$": None, "^nothing$": {"weight": 1}},
        "keep_first": False,
        "keep_last": False,
    }
    with pytest.warns(UserWarning) as caught:
        report = quantize_(net, cfg)
    assert [str(w.message).split(":")[1].strip() for w in caught] == [
        "rules matched no layer", "new trainable parameters ['9.output_scale'] are in no optimizer built before "
        "quantize_; build the optimizer after quantize_ if they should train"]
    assert "nothing" in str(caught[0].message)
    assert report.unmatched_rules == ["^nothing$"]
    assert net[3].weight_quantizer.mix.bits == (2,)
    assert type(net[6]) is nn.Conv2d
    assert isinstance(net[0], HBConv2d) and isinstance(net[9], HBLinear)
    assert net[9].output_scale is not None  # binarized last layer gets the learnable scale
    assert net[0].output_scale is None


def test_conversion_preserves_weights_and_dequantize_restores_float():
    net = small_net()
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    quantize_(net, {"default": {"weight": 1.4}, "keep_first": False})
    assert torch.equal(net[0].weight, ref["0.weight"])
    names = dequantize_(net)
    assert names == ["0", "3", "6"]
    x = torch.randn(1, 1, 8, 8)
    fresh = small_net()
    fresh.load_state_dict(ref)
    net.eval(), fresh.eval()
    torch.testing.assert_close(net(x), fresh(x), atol=0, rtol=0)


def fc4():
    return build_model("cifar_fc4", num_classes=10, in_channels=1, image_size=28)


def test_optimizer_built_before_quantize_trains_binarized_weights():
    torch.manual_seed(0)
    model = fc4()
    old_weight = model.features[4].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    quantize_(model, W14A14)
    assert isinstance(model.features[4], HBConv2d) and model.features[4].weight is old_weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(4, 1, 28, 28)).logsumexp(1).sum().backward()
    opt.step()
    for name in ("features.4.weight", "features.8.weight"):
        assert not torch.equal(model.get_parameter(name), before[name]), name


def test_round_trip_keeps_parameter_objects():
    model = fc4()
    params = dict(model.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # keep_last: no new parameter, nothing unsupported
        quantize_(model, W14A14)
    assert all(model.get_parameter(n) is p for n, p in params.items())
    assert dequantize_(model) == ["features.4", "features.8"]
    assert type(model.features[4]) is nn.Conv2d
    assert list(model.named_parameters()) == list(params.items())


# cifar_fc4 after quantize_ with W14A14 and keep_last=False, as before Parameters were shared.
FC4_STATE_KEYS = [
    "features.0.weight", "features.1.weight", "features.1.bias", "features.1.running_mean",
    "features.1.running_var", "features.1.num_batches_tracked", "features.4.weight",
    "features.4.weight_quantizer.realized", "features.4.act_quantizer.running_mean_abs",
    "features.4.act_quantizer.running_thresholds", "features.4.act_quantizer.running_scales",
    "features.4.act_quantizer.running_bits", "features.4.act_quantizer.num_batches_tracked", "features.5.weight",
    "features.5.bias", "features.5.running_mean", "features.5.running_var", "features.5.num_batches_tracked",
    "features.8.weight", "features.8.weight_quantizer.realized", "features.8.act_quantizer.running_mean_abs",
    "features.8.act_quantizer.running_thresholds", "features.8.act_quantizer.running_scales",
    "features.8.act_quantizer.running_bits", "features.8.act_quantizer.num_batches_tracked", "features.9.weight",
    "features.9.bias", "features.9.running_mean", "features.9.running_var", "features.9.num_batches_tracked",
    "classifier.weight", "classifier.bias", "classifier.output_scale", "classifier.weight_quantizer.realized",
    "classifier.act_quantizer.running_mean_abs", "classifier.act_quantizer.running_thresholds",
    "classifier.act_quantizer.running_scales", "classifier.act_quantizer.running_bits",
    "classifier.act_quantizer.num_batches_tracked",
]


def test_state_dict_and_parameter_order_unchanged():
    model = fc4()
    with pytest.warns(UserWarning, match=r"new trainable parameters \['classifier.output_scale'\]"):
        quantize_(model, {**W14A14, "keep_last": False})
    assert list(model.state_dict()) == FC4_STATE_KEYS
    params = [n for n, _ in model.named_parameters()]
    assert params == [k for k in FC4_STATE_KEYS if k.endswith(("weight", "bias", "output_scale"))]


class TaggedConv(nn.Conv2d):
    """A plain subclass: only adds an attribute."""

    def __init__(self, *args, tag="x", **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = tag


class OwnForwardConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


def zoo():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        TaggedConv(4, 4, 1),
        OwnForwardConv(4, 4, 1),
        nn.Conv2d(4, 4, 1),
        nn.Conv1d(4, 4, 1),
        nn.ConvTranspose2d(4, 4, 1),
        nn.Bilinear(3, 3, 2),
        nn.LazyLinear(3),
        HBLinear(4, 4, weight_quant=1),
        nn.Linear(4, 2),
    )


def test_unsupported_modules_are_reported_and_warned_once():
    model = zoo()
    with pytest.warns(UserWarning) as caught:
        report = quantize_(model, {"default": {"weight": 1}})
    assert len(caught) == 1 and "left 7 conv/linear-like module(s) unconverted" in str(caught[0].message)
    assert list(report.converted) == ["3"]
    assert report.kept_float == {"0": "first layer (keep_first)", "9": "last layer (keep_last)"}
    assert report.unsupported == {
        "1": "TaggedConv (subclass of nn.Conv2d; converting would drop its type and whatever its subclass adds)",
        "2": "OwnForwardConv (subclass of nn.Conv2d with its own forward; converting would change what it computes)",
        "4": "Conv1d (no binarized counterpart; hbnn binarizes nn.Conv2d and nn.Linear)",
        "5": "ConvTranspose2d (no binarized counterpart; hbnn binarizes nn.Conv2d and nn.Linear)",
        "6": "Bilinear (no binarized counterpart; hbnn binarizes nn.Conv2d and nn.Linear)",
        "7": "LazyLinear (uninitialized lazy module; run one forward pass first)",
        "8": "HBLinear (already binarized; dequantize_ first to convert it again)",
    }
    assert type(model[1]) is TaggedConv and type(model[2]) is OwnForwardConv
    like = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)
    seen = {n for n, m in zoo().named_modules() if isinstance(m, like)}
    assert seen == set(report.converted) | set(report.kept_float) | set(report.unsupported)


def test_parametrized_layer_is_unsupported():
    net = small_net()
    nn.utils.parametrize.register_parametrization(net[3], "weight", nn.Identity())
    with pytest.warns(UserWarning, match="parametrized weight"):
        report = quantize_(net, {"default": {"weight": 1}})
    assert "3" in report.unsupported and list(report.converted) == ["6"]


def test_filter_fn_selects_candidates_and_can_silence_unsupported():
    model = zoo()
    seen = []

    def only_plain_conv2d(module, fqn):
        seen.append(fqn)
        return type(module) is nn.Conv2d

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = quantize_(model, {"default": {"weight": 1}, "keep_first": False}, filter_fn=only_plain_conv2d)
    assert list(report.converted) == ["0", "3"] and report.unsupported == {}
    assert report.kept_float == {k: "filter_fn" for k in ["9", "1", "2", "4", "5", "6", "7", "8"]}
    assert sorted(seen) == [str(i) for i in range(10)]
    net = small_net()
    report = quantize_(net, {"default": {"weight": 1}}, filter_fn=lambda m, fqn: fqn != "6")
    assert list(report.converted) == ["3"] and report.kept_float["6"] == "filter_fn"
    assert report.kept_float["9"] == "last layer (keep_last)"  # positions ignore filter_fn
    with pytest.raises(ConfigError, match="filter_fn"):
        quantize_(small_net(), {}, filter_fn="3")


def test_config_round_trip_and_errors():
    cfg = QuantizeConfig.from_dict({"default": {"weight": 1.4}, "rules": {r"\.dw$": None}})
    assert QuantizeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key defaults; allowed in QuantizeConfig: default, rules"):
        QuantizeConfig.from_dict({"defaults": {}})
    with pytest.raises(ConfigError, match="invalid regular expression"):
        QuantizeConfig.from_dict({"rules": {"(": None}})
    with pytest.raises(ConfigError, match="keep_first"):
        QuantizeConfig.from_dict({"keep_first": "no"})


def test_summary_exact_sizes():
    net = small_net()
    quantize_(net, {"default": {"weight": 1.4, "act": 2}})
    s = summarize(net)
    layer = {r["name"]: r for r in s["layers"]}
    n = 16 * 8 * 9  # conv 3 weight entries; counts 806/230/116 of 1152
    assert n == 1152
    planes = 806 * 1 + 230 * 2 + 116 * 3
    expected = planes + n * math.ceil(math.log2(3)) + 32 * 3 + 32 * 16  # map + 3 scales + bias
    assert layer["3"]["stored_bits"] == expected
    assert layer["3"]["weight_bits"] == pytest.approx(planes / n)
    assert layer["3"]["act_bits"] == 2.0
    assert layer["0"]["weight_bits"] == 32.0 and layer["0"]["stored_bits"] == 32 * (8 * 9 + 8)
    m = s["model"]
    assert m["params"] == sum(p.numel() for p in net.parameters())
    bin_params = layer["3"]["params"] + layer["6"]["params"]
    assert m["binarized_params"] == bin_params
    expected_avg = (layer["3"]["weight_bits"] * layer["3"]["params"] + layer["6"]["weight_bits"] * layer["6"]["params"]) / bin_params
    assert m["avg_weight_bits"] == pytest.approx(expected_avg)
    assert m["avg_act_bits"] == 2.0


def test_import_hbnn_is_light():
    # (tqdm is not listed: torch itself imports it.)
    code = (
        "import sys, hbnn; heavy = [m for m in ('matplotlib', 'tensorboard', 'onnx', 'onnxruntime', 'PIL', "
        "'hbnn.kernels', 'hbnn.train', 'yaml') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
