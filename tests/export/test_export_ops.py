"""Ops plain-PyTorch models use, through ``export_model`` -> ``load`` -> ONNX: functional pools,
arithmetic with constants (ReActNet's learnable biases), SE scaling, shape ops that keep the
batch dimension, ``torch.cat`` along any non-batch dim, zero padding, softmax heads,
functional conv/linear with constant weights, in-place activations, nested ``Sequential``,
eval-mode tracing; validation of the new records."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hbnn.convert import quantize_
from hbnn.errors import FormatError
from hbnn.export import export_model, load, pack_model, read_packed

Q = {"weight": 1.4, "act": 1.4}


class Functional(nn.Module):
    """Float ops only, each written the way plain PyTorch code writes it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(nn.Dropout2d(0.1), nn.ReLU(True)))
        self.bias = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.register_buffer("scale", torch.rand(8, 1, 1) + 0.5)
        self.prelu, self.dw = nn.PReLU(8), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.classifier = nn.Linear(16, 5)

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 2)
        y = self.prelu(x + self.bias.expand_as(x)) - 0.25          # RPReLU-style learnable shifts
        y = 2.0 * (y * self.scale)
        z = self.dw(y)
        z = z * F.hardsigmoid(self.fc2(F.relu(self.fc1(z.mean((2, 3), keepdim=True)))))  # squeeze-excitation
        z = z * F.relu6(z + 3) / 6                                  # hardswish by hand
        z = torch.cat([z, torch.sigmoid(y)], -3)
        z = F.avg_pool2d(z, kernel_size=2)
        z = F.adaptive_max_pool2d(z, 1).squeeze(-1).squeeze(-1)
        z = F.dropout(torch.tanh(z.clamp(-1, 1)), 0.5, self.training)
        return self.classifier(z.view(-1, 16))


class Shapes(nn.Module):
    """Spatial cat, view with sizes, unsqueeze/flatten, clamp(min=0), in-place relu on a fresh tensor."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 12, 3)

    def forward(self, x):
        y = self.conv(x)
        y = torch.cat([y, F.avg_pool2d(y, 3, stride=1, padding=1)], dim=-1)        # [N, 4, 6, 12]
        y = y.view(y.size(0), y.size(1), -1).unsqueeze(2)                          # [N, 4, 1, 72]
        y = torch.clamp(y, min=0).flatten(1).relu_()
        return self.fc(y)


class Heads(nn.Module):
    """An MLP head: ``x.view(-1, K)``, a difference of two layers, softmax and log-softmax outputs."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(36, 12), nn.Linear(36, 12), nn.Linear(12, 5)

    def forward(self, x):
        x = x.view(-1, 36)
        h = F.softmax(self.fc1(x) - self.fc2(x), dim=-1)
        return F.log_softmax(self.fc3(h), dim=1)


class Padded(nn.Module):
    """Zero padding as a layer and as F.pad of W only, of H and W, and of channels (option A)."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 0, 2, 1))
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        y = self.conv1(self.pad(x))                                  # [N, 4, 7, 5]
        y = self.conv2(F.pad(F.pad(y, (1, 1)), (0, 0, 1, 0)))         # [N, 4, 6, 5]
        return self.fc(F.pad(y, (0, 0, 0, 0, 1, 2)).mean((2, 3)))


class WeightStandardized(nn.Module):
    """A weight-standardized conv and a linear layer written with F.conv2d / F.linear."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 1, 3, 3))
        self.w_fc, self.b_fc = nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(3))

    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        y = F.conv2d(x, w / (w.std((1, 2, 3), keepdim=True) + 1e-5), None, 1, 1, 1, 2)
        return F.linear(y.mean((2, 3)), self.w_fc, self.b_fc)


class BasicBlock(nn.Module):
    """torchvision's basic block: in-place ReLU modules, ``out += identity``, a Sequential downsample."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TorchvisionStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer = nn.Sequential(BasicBlock(8, 16, 2))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.layer(F.max_pool2d(self.stem(x), kernel_size=3, stride=1, padding=1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class LearnableBias(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(1, c, 1, 1) * 0.1)

    def forward(self, x):
        return x + self.bias.expand_as(x)


class ReActBlock(nn.Module):
    """ReActNet: move0 -> binarized 3x3 -> BN -> + shortcut (avg pool; channels doubled by a
    cat of two binarized 1x1 convs) -> RPReLU (shift, PReLU, shift)."""

    def __init__(self, c):
        super().__init__()
        self.move0 = LearnableBias(c)
        self.conv3 = nn.Conv2d(c, c, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.pool = nn.AvgPool2d(2, 2)
        self.move1, self.prelu, self.move2 = LearnableBias(c), nn.PReLU(c), LearnableBias(c)
        self.move3 = LearnableBias(c)
        self.down1, self.down2 = nn.Conv2d(c, c, 1, bias=False), nn.Conv2d(c, c, 1, bias=False)
        self.bn2, self.bn3 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.bn1(self.conv3(self.move0(x))) + self.pool(x)
        out = self.move2(self.prelu(self.move1(out)))
        y = self.move3(out)
        return torch.cat([self.bn2(self.down1(y)), self.bn3(self.down2(y))], dim=1) + torch.cat([out, out], 1)


class ReActStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardtanh())
        self.block = ReActBlock(8)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean([2, 3]))


class InvertedSE(nn.Module):
    """MobileNetV2/V3: expand, depthwise, squeeze-excitation (sigmoid), project; residual ``x + f(x)``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                nn.Hardswish())
        self.se1, self.se2 = nn.Linear(16, 4), nn.Linear(4, 16)
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 4))

    def forward(self, x):
        x = self.stem(x)
        h = self.dw(self.expand(x))
        b, c, _, _ = h.size()
        s = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(h, 1).view(b, c)))))
        x = x + self.project(s.view(b, c, 1, 1) * h)  # MobileNetV3 writes scale * input
        return self.head(x.mean((2, 3)))


def _binarized(model: nn.Module, shape, calibrate) -> nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="quantize_: new trainable parameters")
        quantize_(model, {"default": Q, "keep_first": True, "keep_last": True})
    return calibrate(model, shape, batches=3, seed=1)


FLOAT = {"functional": (Functional, (3, 8, 8)), "shapes": (Shapes, (2, 6, 6)), "heads": (Heads, (1, 6, 6)),
         "padded": (Padded, (2, 6, 6)), "standardized": (WeightStandardized, (2, 5, 5)),
         "torchvision": (TorchvisionStyle, (3, 8, 8)), "reactnet": (ReActStyle, (3, 8, 8)),
         "inverted_se": (InvertedSE, (3, 8, 8))}
BINARIZED = ["torchvision", "reactnet", "inverted_se"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, calibrator) -> dict:
    """``{name: (model, shape, path)}``: float models (calibrated BN) and binarized ones (``<name>_hb``)."""
    folder = tmp_path_factory.mktemp("ops")
    out = {}
    for name, (cls, shape) in FLOAT.items():
        torch.manual_seed(0)
        model = calibrator(cls(), shape, batches=2, seed=0)
        export_model(model, folder / f"{name}.hbnn", input_shape=list(shape), fold_bn=False)
        out[name] = (model, shape, folder / f"{name}.hbnn")
        if name in BINARIZED:
            torch.manual_seed(0)
            hb = _binarized(cls(), shape, calibrator)
            export_model(hb, folder / f"{name}_hb.hbnn", input_shape=list(shape))
            out[f"{name}_hb"] = (hb, shape, folder / f"{name}_hb.hbnn")
    return out


def _x(shape, n=16, seed=3):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(FLOAT))
def test_float_graphs_run_exactly_as_the_model(name, exported):
    """Same float ops in the same order: bit-identical (the engine runs NHWC, so the model does too here)."""
    model, shape, path = exported[name]
    x = _x(shape)
    with torch.no_grad():
        ref = model.eval()(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)
        assert torch.equal(load(path)(x), ref)


@pytest.mark.parametrize("name", BINARIZED)
def test_binarized_graphs_match_the_model(name, exported, parity):
    model, shape, path = exported[f"{name}_hb"]
    engine = load(path)
    x = _x(shape)
    with torch.no_grad():
        parity(model(x), engine(x))
    assert any(getattr(m, "binary", False) for m in engine.layers)


@pytest.mark.parametrize("name", [*FLOAT, *(f"{n}_hb" for n in BINARIZED)])
def test_onnxruntime_matches_the_engine(name, exported, tmp_path, parity):
    """onnxruntime vs the engine within assert_parity's atol 1e-4 (HardSigmoid multiplies by 1/6
    where torch divides; convolutions sum in another order)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from hbnn.export import to_onnx

    _, shape, path = exported[name]
    to_onnx(path, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = _x(shape)
    with torch.no_grad():
        parity(load(path)(x), torch.from_numpy(session.run(None, {"input": x.numpy()})[0]))


def _records(exported, name) -> dict:
    return {r["name"]: r for r in read_packed(exported[name][2])[0]["layers"]}


def test_functional_records(exported):
    recs = _records(exported, "functional")
    ops = sorted({r["op"] for r in recs.values()})
    for op in ("add_constant", "mul_constant", "div_constant", "mul", "reshape", "sigmoid", "hardsigmoid", "tanh",
               "max_pool2d", "avg_pool2d", "adaptive_max_pool2d", "cat", "identity"):
        assert op in ops, ops
    assert recs["add"]["shape"] == [1, 8, 1, 1] and recs["sub"]["shape"] == []  # x - 0.25 is x + (-0.25)
    assert recs["mul"]["op"] == "mul_constant" and recs["mul_1"]["op"] == "mul_constant"  # 2.0 * (y * scale)
    assert recs["mul_2"] == {"op": "mul", "name": "mul_2", "attrs": {}, "inputs": ["dw", "hardsigmoid"]}
    assert recs["cat"]["attrs"] == {"dim": 1}  # dim -3 of [N, C, H, W]
    assert recs["squeeze"]["attrs"] == {"shape": [16, 1]} and recs["squeeze_1"]["op"] == "flatten"
    assert recs["clamp"]["attrs"] == {"min_val": -1.0, "max_val": 1.0} and recs["dropout"]["op"] == "identity"
    assert recs["view"]["op"] == "flatten"  # view(-1, 16) of [N, 16]
    value = read_packed(exported["functional"][2])[1]
    index = list(recs).index("sub")
    assert torch.equal(value[f"{index}.value"], torch.tensor(-0.25))


def test_shape_records(exported):
    recs = _records(exported, "shapes")
    assert recs["cat"]["attrs"] == {"dim": 3}
    assert recs["view"]["attrs"] == {"shape": [4, 72]} and recs["unsqueeze"]["attrs"] == {"shape": [4, 1, 72]}
    assert recs["clamp"]["op"] == "relu" and recs["relu_"]["op"] == "relu"


def test_head_records(exported):
    recs = _records(exported, "heads")
    assert [r["op"] for r in recs.values()] == ["flatten", "linear", "linear", "sub", "softmax", "linear",
                                                "log_softmax"]
    assert recs["sub"]["inputs"] == ["fc1", "fc2"] and recs["softmax"]["attrs"] == {"dim": -1}


def test_pad_records(exported):
    recs = _records(exported, "padded")
    assert recs["pad"]["attrs"] == {"padding": [1, 0, 2, 1, 0, 0]}
    assert recs["pad_1"]["attrs"] == {"padding": [1, 1, 0, 0, 0, 0]}
    assert recs["pad_2"]["attrs"] == {"padding": [0, 0, 1, 0, 0, 0]}
    assert recs["pad_3"] == {"op": "pad_channels", "name": "pad_3", "attrs": {"before": 1, "after": 2},
                             "inputs": ["conv2"]}


def test_functional_layers_store_their_constant_weights(exported):
    model = exported["standardized"][0]
    header, tensors, _ = read_packed(exported["standardized"][2])
    conv, linear = header["layers"][0], header["layers"][2]
    assert conv["op"] == "conv2d" and conv["geometry"]["groups"] == 2 and not conv["bias"]
    w = model.weight - model.weight.mean((1, 2, 3), keepdim=True)
    assert torch.equal(tensors["0.weight"], (w / (w.std((1, 2, 3), keepdim=True) + 1e-5)).detach())
    assert linear["op"] == "linear" and torch.equal(tensors["2.weight"], model.w_fc.detach())


def test_reactnet_learnable_biases_are_constants(exported):
    recs = _records(exported, "reactnet_hb")
    shifts = [r for r in recs.values() if r["op"] == "add_constant"]
    assert len(shifts) == 4 and all(r["shape"] == [1, 8, 1, 1] for r in shifts)
    assert [r["op"] for r in recs.values()].count("cat") == 2


def test_training_mode_model_is_traced_in_eval_mode(tmp_path, calibrated):
    torch.manual_seed(0)
    model = calibrated(Functional(), (3, 8, 8), batches=1).train()
    export_model(model, tmp_path / "m.hbnn", input_shape=[3, 8, 8])  # F.dropout(x, p, self.training) reads False
    assert all(m.training for m in model.modules())


def test_shape_dependent_forms_need_the_input_shape(tmp_path):
    class Viewed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(36, 3)

        def forward(self, x):
            return self.fc(x.view(-1, 36))

    with pytest.raises(FormatError, match=r"tensor method .view\(\) in forward with a shape-dependent form and no "
                                          r"known input shape \(pass input_shape"):
        pack_model(Viewed())
    assert pack_model(Viewed(), input_shape=[1, 6, 6])[0]["layers"][0]["op"] == "flatten"


# ----------------------------------------------------------------------------- validation of the new records

def _edit(name: str, **fields):
    def edit(h):
        next(r for r in h["layers"] if r["name"] == name).update(fields)
    return edit


def _attrs(name: str, **attrs):
    def edit(h):
        next(r for r in h["layers"] if r["name"] == name)["attrs"].update(attrs)
    return edit


BAD = {
    "cat batch": ("functional", _attrs("cat", dim=0),
                  r"\(cat\): attrs.dim: invalid value 0; allowed: an integer in 1\.\.4"),
    "cat past rank": ("functional", _attrs("cat", dim=4),
                      r"\(cat\): shapes do not chain .* it needs inputs with a dim 4"),
    "reshape elements": ("functional", _attrs("squeeze", shape=[15, 1]),
                         r"\(squeeze\): shapes do not chain .* it needs 15 elements per input for shape \[15, 1\]"),
    "reshape empty": ("functional", _attrs("squeeze", shape=[]),
                      r"\(squeeze\): attrs.shape: invalid value \[\]; allowed: a list of 1\.\.4 positive integers"),
    "reshape zero": ("functional", _attrs("squeeze", shape=[16, 0]), r"attrs.shape: invalid value \[16, 0\]"),
    "constant shape": ("functional", _edit("add", shape=[1, 8, 4, 1]),
                       r"\(add\): tensor '\d+.value' has torch.float32 \[1, 8, 1, 1\], expected torch.float32 "
                       r"\[1, 8, 4, 1\]"),
    "constant broadcast": ("functional", _edit("mul", shape=[3, 1, 1]),
                           r"\(mul\): shapes do not chain .* a shape the constant \[3, 1, 1\] broadcasts to"),
    "constant keys": ("functional", _edit("add", attrs={}), r"\(add\): attrs: unknown field"),
    "mul arity": ("functional", lambda h: next(r for r in h["layers"] if r["op"] == "mul").update(inputs=["dw"]),
                  r"inputs: mul takes 2 inputs, the record names 1"),
    "pad negative": ("padded", _attrs("pad", padding=[1, 0, 2, -1, 0, 0]), r"\(pad\): attrs.padding: invalid value"),
    "pad size": ("padded", _attrs("pad", padding=[1, 0, 2, 1]), r"\(pad\): attrs.padding: invalid value"),
    "softmax batch": ("heads", _attrs("softmax", dim=0),
                      r"\(softmax\): attrs.dim: invalid value 0; allowed: an integer in -4\.\.4 other than 0"),
    "softmax rank": ("heads", _attrs("softmax", dim=2),
                     r"\(softmax\): shapes do not chain .* it needs a dim 2 other than the batch dimension"),
    "sub arity": ("heads", _edit("sub", inputs=["fc1"]), r"\(sub\): inputs: sub takes 2 inputs, the record names 1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_new_records_are_refused_in_one_line(case, exported, tmp_path, rewrite, refused, capsys):
    source, edit, pattern = BAD[case]
    path = tmp_path / "m.hbnn"
    path.write_bytes(exported[source][2].read_bytes())
    rewrite(path, edit)
    refused(path, pattern, capsys)


def test_constant_expressions_are_evaluated_at_export(tmp_path):
    """Expressions of parameters alone (``exp(log_scale).view(...)``) become one stored constant."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.log_scale, self.shift = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3))

        def forward(self, x):
            y = self.conv(x) * torch.exp(self.log_scale).view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)
            return y.flatten(1)

    torch.manual_seed(0)
    model = Scaled().eval()
    export_model(model, tmp_path / "m.hbnn", input_shape=[2, 4, 4])
    header, tensors, _ = read_packed(tmp_path / "m.hbnn")
    assert [r["op"] for r in header["layers"]] == ["conv2d", "mul_constant", "add_constant", "flatten"]
    assert torch.equal(tensors["1.value"], torch.exp(model.log_scale.detach()).view(1, -1, 1, 1))
    x = _x((2, 4, 4))
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m.hbnn")(x), model(x.contiguous(memory_format=torch.channels_last)))
