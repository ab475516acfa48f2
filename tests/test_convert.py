"""quantize_: rules, default policy, reports; summarize: exact stored sizes."""

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from hbnn import quantize_, summarize
from hbnn.convert import QuantizeConfig, dequantize_
from hbnn.errors import ConfigError
from hbnn.nn import HBConv2d, HBLinear


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
    with pytest.warns(UserWarning, match="nothing"):
        report = quantize_(net, cfg)
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
