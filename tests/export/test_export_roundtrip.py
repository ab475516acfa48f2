"""export -> load -> same predictions and logits, for every bit setting the engine supports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hbnn.convert import quantize_
from hbnn.export import PackedLayer, export_model, load
from hbnn.kernels import available_backends

QUANTS = {
    "W1A1": {"weight": 1, "act": 1},
    "W2A2": {"weight": 2, "act": 2},
    "W1.4A1.4": {"weight": 1.4, "act": 1.4},
    "W1.4-per-channel-A2": {"weight": {"bits": 1.4, "per_channel": True}, "act": 2},
    "W1.4-block4-A1.4": {"weight": {"bits": 1.4, "block": 4}, "act": 1.4},
    "W80/0/20-A1.4-top-down": {"weight": "80/0/20", "act": {"bits": 1.4, "heuristic": "top_down"}},
    "W1.4-random-A1.6-bottom-up": {"weight": {"bits": 1.4, "heuristic": "random"},
                                   "act": {"bits": 1.6, "heuristic": "bottom_up"}},
}


def _roundtrip(model, tmp_path, meta=None, shape=(1, 12, 12), **load_kw):
    export_model(model, tmp_path / "m.hbnn", meta=meta, input_shape=None if meta else shape)
    return load(tmp_path / "m.hbnn", **load_kw)


@pytest.mark.parametrize("name", list(QUANTS))
def test_roundtrip_same_predictions(name, tmp_path, meta, make_fc4, parity):
    model = make_fc4(QUANTS[name], seed=len(name))
    engine = _roundtrip(model, tmp_path, meta)
    x = torch.randn(32, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        parity(model(x), engine(x))
    binary = [layer for layer in engine.layers if isinstance(layer, PackedLayer) and layer.binary]
    assert len(binary) == 2  # the two hidden convs run the bit-serial kernels; first/last stay float


def test_multi_word_channels(tmp_path, make_fc4, parity):
    model = make_fc4({"weight": 1.4, "act": 1.4}, widths=(8, 70, 72))  # 70, 72 channels: two words per pixel
    engine = _roundtrip(model, tmp_path)
    x = torch.randn(16, 1, 12, 12)
    with torch.no_grad():
        parity(model(x), engine(x))


def test_weights_only_and_binarized_first_last_layers(tmp_path, make_fc4, parity):
    model = make_fc4({"weight": 1.4}, keep_first=False, keep_last=False)  # float inputs: float path on w_hat
    engine = _roundtrip(model, tmp_path)
    assert not any(isinstance(m, PackedLayer) and m.binary for m in engine.layers)
    assert sum(isinstance(m, PackedLayer) and m.planes is not None for m in engine.layers) == 4
    x = torch.randn(16, 1, 12, 12)
    with torch.no_grad():
        parity(model(x), engine(x))


def test_activations_only(tmp_path, make_fc4, parity):
    model = make_fc4({"act": 1.4})
    engine = _roundtrip(model, tmp_path)
    x = torch.randn(16, 1, 12, 12)
    with torch.no_grad():
        parity(model(x), engine(x))


def _mlp(quant: dict, calibrate) -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 70), nn.BatchNorm1d(70), nn.Hardtanh(),
                          nn.Linear(70, 65), nn.BatchNorm1d(65), nn.Hardtanh(), nn.Dropout(0.5),
                          nn.Linear(65, 40), nn.BatchNorm1d(40), nn.Hardtanh(), nn.Linear(40, 5))
    quantize_(model, {"default": quant})
    return calibrate(model, (1, 6, 6))


@pytest.mark.parametrize("quant", [{"weight": 1, "act": 1}, {"weight": 1.4, "act": 1.4}])
def test_linear_layers_run_binary_linear(quant, tmp_path, calibrated, parity):
    model = _mlp(quant, calibrated)
    engine = _roundtrip(model, tmp_path, shape=(1, 6, 6))
    assert sum(isinstance(m, PackedLayer) and m.binary for m in engine.layers) == 2
    x = torch.randn(32, 1, 6, 6)
    with torch.no_grad():
        parity(model(x), engine(x))


@pytest.mark.skipif("c" not in available_backends(), reason="C kernels unavailable")
def test_c_and_torch_backends_give_identical_outputs(tmp_path, make_fc4):
    model = make_fc4({"weight": 1.4, "act": 1.4})
    export_model(model, tmp_path / "m.hbnn", input_shape=[1, 12, 12])
    x = torch.randn(8, 1, 12, 12)
    out_c, out_t = load(tmp_path / "m.hbnn", backend="c")(x), load(tmp_path / "m.hbnn", backend="torch")(x)
    torch.testing.assert_close(out_c, out_t, atol=0, rtol=0)


def test_export_leaves_the_model_alone_and_ignores_its_mode(tmp_path, make_fc4):
    model = make_fc4({"weight": 1.4, "act": 1.4})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, tmp_path / "eval.hbnn", input_shape=[1, 12, 12])
    model.train()
    export_model(model, tmp_path / "train.hbnn", input_shape=[1, 12, 12])
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "eval.hbnn").read_bytes() == (tmp_path / "train.hbnn").read_bytes()


def test_packed_model_stays_in_eval_mode(tmp_path, make_fc4):
    engine = _roundtrip(make_fc4({"weight": 1, "act": 1.4}), tmp_path)
    engine.train()
    assert not engine.training and not any(m.training for m in engine.modules())
    x = torch.randn(4, 1, 12, 12)
    a = engine(x)
    engine(x * 3)  # would move running estimates if anything were in training mode
    torch.testing.assert_close(engine(x), a, atol=0, rtol=0)
