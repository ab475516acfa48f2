"""Graph export: residual, depthwise-separable, functional-activation and ResNet-20 models
through ``export_model`` -> ``load`` (and ONNX), graph validation, refused models."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hbnn.convert import quantize_
from hbnn.errors import FormatError
from hbnn.export import SUPPORTED_LAYERS, PackedConv2d, PackedLayer, export_model, load, read_packed
from hbnn.export.ops import SUPPORTED_FUNCTIONS
from hbnn.kernels import available_backends
from hbnn.models import RESNET_QUANT, build_model
from hbnn.models._resnet_blocks import BasicBlock

Q = {"weight": 1.4, "act": 1.4}


def _quantize(model: nn.Module, quant: dict, **extra) -> nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="quantize_: new trainable parameters")
        quantize_(model, {"default": quant, **extra})
    return model


class TwoBlocks(nn.Module):
    """Stem, a basic block with option-A shortcut (4 -> 8, stride 2), one with option B (8 -> 12, stride 2)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Hardtanh())
        kw = dict(activation="hardtanh", binarize_shortcut=False)
        self.a = BasicBlock(4, 8, 2, shortcut="A", **kw)
        self.b = BasicBlock(8, 12, 2, shortcut="B", **kw)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(12, 5)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.b(self.a(self.stem(x)))), 1))


class Separable(nn.Module):
    """MobileNetV2-like: stem, depthwise 3x3 + pointwise 1x1 with an inverted residual, cat, PReLU,
    LeakyReLU, SiLU, Hardswish, ReLU6 and a global mean."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(8)
        self.prelu = nn.PReLU(8)
        self.grouped = nn.Conv2d(16, 8, 3, padding=1, groups=2, bias=False)
        self.grouped_bn = nn.BatchNorm2d(8)
        self.leaky = nn.LeakyReLU(0.1)
        self.silu, self.hswish = nn.SiLU(), nn.Hardswish()
        self.classifier = nn.Linear(8, 4)

    def forward(self, x):
        h = F.hardtanh(self.stem_bn(self.stem(x)))
        y = self.act(self.dw_bn(self.dw(h)))
        y = self.pw_bn(self.pw(y))
        y += h  # inverted residual, in place
        y = self.prelu(y)
        z = self.leaky(self.grouped_bn(self.grouped(torch.cat([y, h], dim=1))))
        z = self.hswish(self.silu(z)) + F.relu6(z)
        return self.classifier(z.mean((2, 3)))


class FunctionalMLP(nn.Module):
    """Linear layers joined by functional activations and a view flatten."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(36, 40), nn.Linear(40, 40), nn.Linear(40, 24), \
            nn.Linear(24, 6)
        self.bn = nn.BatchNorm1d(40)

    def forward(self, x):
        x = F.hardtanh(self.bn(self.fc1(x.view(x.size(0), -1))))
        x = F.leaky_relu(self.fc2(x), 0.2) + F.relu(x)
        x = F.silu(self.fc3(x.reshape(x.shape[0], -1)))
        return self.fc4(F.hardswish(x))


def _calibrated(model: nn.Module, shape: tuple, calibrate) -> nn.Module:
    return calibrate(model, shape, batches=3, seed=1)


def _resnet20(calibrate, shortcut="A") -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3, image_size=8, width_mult=0.25, shortcut=shortcut)
    _quantize(model, Q, **RESNET_QUANT)
    return _calibrated(model, (3, 8, 8), calibrate)


def _models(calibrate) -> dict:
    torch.manual_seed(0)
    two = _calibrated(_quantize(TwoBlocks(), Q, keep_first=True, keep_last=True), (1, 12, 12), calibrate)
    sep = _calibrated(_quantize(Separable(), {"weight": 2, "act": 2}, keep_first=True, keep_last=True),
                      (2, 8, 8), calibrate)
    mlp = _calibrated(_quantize(FunctionalMLP(), Q, keep_first=True, keep_last=True), (1, 6, 6), calibrate)
    return {"two_blocks": (two, (1, 12, 12)), "separable": (sep, (2, 8, 8)), "mlp": (mlp, (1, 6, 6)),
            "resnet20": (_resnet20(calibrate), (3, 8, 8)), "resnet20_B": (_resnet20(calibrate, "B"), (3, 8, 8))}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, calibrator) -> dict:
    """Every model exported once: ``{name: (model, shape, path)}``."""
    calibrate = calibrator
    folder = tmp_path_factory.mktemp("graph")
    out = {}
    for name, (model, shape) in _models(calibrate).items():
        export_model(model, folder / f"{name}.hbnn", input_shape=list(shape))
        out[name] = (model, shape, folder / f"{name}.hbnn")
    return out


NAMES = ["two_blocks", "separable", "mlp", "resnet20", "resnet20_B"]


def _x(shape, n=24, seed=7):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_engine_matches_the_model(name, exported, parity):
    model, shape, path = exported[name]
    engine = load(path)
    x = _x(shape)
    with torch.no_grad():
        parity(model(x), engine(x))
    assert any(isinstance(m, PackedLayer) and m.binary for m in engine.layers)


def test_residual_graph_structure(exported):
    header = read_packed(exported["two_blocks"][2])[0]
    ops = [r["op"] for r in header["layers"]]
    assert ops.count("add") == 2 and "subsample" in ops and "pad_channels" in ops
    recs = {r["name"]: r for r in header["layers"]}
    add_a = recs["a.add"]
    assert add_a["inputs"] == ["a.conv2", "a.shortcut.pad"]  # bn2 folded into conv2
    assert recs["a.shortcut.getitem"]["attrs"] == {"stride": [2, 2]}
    assert recs["a.shortcut.pad"]["attrs"] == {"before": 0, "after": 4}
    assert recs["b.shortcut.float_conv"]["folded"] == ["b.shortcut.bn"]
    assert recs["stem.0"]["inputs"] == ["input"]


def test_resnet20_runs_its_binarized_convs_on_the_kernels(exported):
    engine = load(exported["resnet20"][2])
    binary = [n for n, m in engine.named_layers() if isinstance(m, PackedLayer) and m.binary]
    assert len(binary) == 18 and "features.stem" not in binary  # 9 blocks x 2 convs; stem and classifier float
    header = read_packed(exported["resnet20"][2])[0]
    assert [r["op"] for r in header["layers"]].count("add") == 9


def test_grouped_binarized_convs_run_the_kernels_per_group(exported):
    engine = load(exported["separable"][2])
    convs = {n: m for n, m in engine.named_layers() if isinstance(m, PackedConv2d)}
    assert convs["dw"].groups == 8 and convs["dw"].binary and len(convs["dw"].group_weights) == 8
    assert convs["grouped"].groups == 2 and convs["grouped"].binary


@pytest.mark.skipif("c" not in available_backends(), reason="C kernels unavailable")
@pytest.mark.parametrize("name", ["separable", "resnet20"])
def test_c_kernels_bit_exact_vs_the_reference_backend(name, exported):
    _, shape, path = exported[name]
    x = _x(shape, 8)
    torch.testing.assert_close(load(path, backend="c")(x), load(path, backend="torch")(x), atol=0, rtol=0)


def test_grouped_kernel_path_equals_the_float_grouped_conv(exported):
    """Per-group kernels vs F.conv2d(groups) on the same Q_a(x) and w_hat: float rounding only."""
    engine = load(exported["separable"][2])
    dw = dict(engine.named_layers())["dw"]
    x = torch.randn(4, 8, 8, 8)
    with torch.no_grad():
        kernel = dw(x)
        ref = dw._finish(dw.float_op(dw.quantize_input(x), None), dw.CHANNEL_SHAPE)
    torch.testing.assert_close(kernel, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_matches_the_engine(name, exported, tmp_path, parity):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from hbnn.export import to_onnx

    _, shape, path = exported[name]
    to_onnx(path, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = _x(shape)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        parity(load(path)(x), got)


def test_chain_files_record_chain_inputs(tmp_path, make_fc4):
    export_model(make_fc4(Q), tmp_path / "m.hbnn", input_shape=[1, 12, 12])
    header = read_packed(tmp_path / "m.hbnn")[0]
    names = ["input"] + [r["name"] for r in header["layers"]]
    assert [r["inputs"] for r in header["layers"]] == [[n] for n in names[:-1]]
    assert load(tmp_path / "m.hbnn").inputs == [[i - 1] for i in range(len(header["layers"]))]


def test_version_2_fixture_still_loads_as_a_chain():
    path = Path(__file__).parent / "data" / "v2_small.hbnn"
    header = read_packed(path)[0]
    assert header["version"] == 2 and not any("inputs" in r for r in header["layers"])
    engine = load(path)
    assert engine.inputs == [[i - 1] for i in range(len(header["layers"]))]


# ----------------------------------------------------------------------------- refused models

class _Wrap(nn.Module):
    def __init__(self, fn, conv=True):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.gelu = nn.GELU()
        self.relu = nn.ReLU(inplace=True)
        self.register_buffer("c64", torch.ones(2, 1, 1, dtype=torch.float64))
        self.fn = fn

    def forward(self, x):
        return self.fn(self, x)


def _gated(m, x):
    return torch.exp(m.conv(x)).flatten(1)


def _inplace_reread(m, x):
    y = m.conv(x)
    z = F.relu(y, inplace=True)
    return (y + z).flatten(1)


def _inplace_through_view(m, x):
    y = m.conv(x)
    v = y.flatten(1)  # shares y's memory
    return v + y.relu_().flatten(1)


def _branchy(m, x):
    y = m.conv(x)
    if y.sum() > 0:
        y = -y
    return y.flatten(1)


REFUSED = {
    "exp": (_gated, r"operation function torch.exp \(call_function\) in forward is not supported"),
    "control flow": (_branchy, r"cannot capture _Wrap with torch.fx .*data-dependent control flow is not supported"),
    "transpose": (lambda m, x: m.conv(x).transpose(2, 3).flatten(1), r"tensor method .transpose\(\)"),
    "cat dim 0": (lambda m, x: torch.cat([m.conv(x), x], 0).flatten(1), r"torch.cat along dim 0 \(the batch "),
    "cat dim -4": (lambda m, x: torch.cat([m.conv(x), x], -4).flatten(1), r"torch.cat along dim -4 \(the batch "),
    "mean dim 1": (lambda m, x: m.conv(x).mean(1).flatten(1), r"mean over dims 1"),
    "view batch": (lambda m, x: m.conv(x).view(2, -1), r"tensor method .view\(\) in forward with a result that "
                   r"does not keep the batch dimension first \(\[2, 32\] for a batch of 2, \[2, 48\] for 3\)"),
    "view -1": (lambda m, x: m.conv(x).view(-1).unsqueeze(1), r"does not keep the batch dimension first"),
    "squeeze": (lambda m, x: m.conv(x).mean((2, 3), keepdim=True).squeeze(), r"squeeze\(\) without dims"),
    "reflect pad": (lambda m, x: F.pad(m.conv(x), (1, 1, 0, 0), mode="reflect").flatten(1),
                    r"F.pad\(pad=\(1, 1, 0, 0\), mode='reflect', value=None\) \(zeros"),
    "negative pad": (lambda m, x: F.pad(m.conv(x), (-1, 0)).flatten(1), r"F.pad\(pad=\(-1, 0\)"),
    "offset slice": (lambda m, x: m.conv(x)[:, :, 1::2, ::2].flatten(1), r"indexing x\["),
    "constant minus": (lambda m, x: (1 - m.conv(x)).flatten(1), r"a subtraction of anything but a tensor and a "
                                                                  r"tensor or constant \(constant first: not allowed"),
    "divide tensors": (lambda m, x: (m.conv(x) / x).flatten(1), r"operator.truediv in forward with a division of "
                                                               r"two tensors"),
    "float64 constant": (lambda m, x: (m.conv(x) * m.c64).flatten(1), r"a constant of dtype torch.float64"),
    "constant times size": (lambda m, x: (m.conv(x) * x.size(1)).flatten(1), r"operator.mul in forward with a "
                                                                            r"product of anything but a tensor and"),
    "pool indices": (lambda m, x: F.max_pool2d(m.conv(x), 2, return_indices=True)[0].flatten(1),
                     r"operation function torch.nn.functional.max_pool2d_with_indices "),
    "softmax batch": (lambda m, x: F.softmax(m.conv(x).flatten(1), 0), r"softmax in forward with dim=0 \(the "
                                                                        r"batch dimension\)"),
    "softmax no dim": (lambda m, x: F.softmax(m.conv(x).flatten(1)), r"with dim=None \(a named dim"),
    "conv of inputs": (lambda m, x: F.conv2d(m.conv(x), x).flatten(1), r"torch.conv2d in forward with a weight or "
                                                                        r"bias that is not a float32 constant"),
    "one-sided clamp": (lambda m, x: m.conv(x).clamp(max=1).flatten(1), r"clamp\(min=None, max=1\)"),
    "in-place read again": (_inplace_reread, r"in-place function torch.nn.functional.relu in forward on a tensor "
                                             r"that is read again after it \(by add\)"),
    "in-place via a view": (_inplace_through_view, r"in-place tensor method .relu_\(\) in forward on a tensor "
                                                   r"that is read again after it"),
    "in-place layer": (lambda m, x: (lambda y: (m.relu(y) + y).flatten(1))(m.conv(x)),
                       r"in-place layer 'relu' on a tensor that is read again after it \(by add\)"),
    "alpha": (lambda m, x: torch.add(m.conv(x), x, alpha=2).flatten(1), r"torch.add with alpha != 1"),
    "unused": (lambda m, x: (F.relu(x), m.conv(x).flatten(1))[1], r"the output of relu \(ReLU\) is never used"),
    "tuple output": (lambda m, x: (m.conv(x), x), r"does not return one tensor"),
    "reused conv": (lambda m, x: m.conv(m.conv(x)).flatten(1), r"calling layer 'conv' more than once"),
    "gelu": (lambda m, x: m.gelu(m.conv(x)).flatten(1), r"layer 'gelu' of type GELU is not supported"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_models_are_one_line_and_write_nothing(case, tmp_path):
    fn, pattern = REFUSED[case]
    model = _Wrap(fn)
    with pytest.raises(FormatError) as exc:
        export_model(model, tmp_path / "x.hbnn", input_shape=[2, 4, 4])
    text = str(exc.value)
    assert "\n" not in text and re.search(pattern, text), text
    if "not supported" in text:
        assert all(name in text for name in SUPPORTED_LAYERS) and all(f in text for f in SUPPORTED_FUNCTIONS)
    assert not list(tmp_path.iterdir())


def test_in_place_add_on_a_tensor_read_again_is_refused(tmp_path):
    """fx records ``z += x`` as ``z + x``; the check run of the traced graph against the model catches it."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            z = y
            z += x
            return (y + z).flatten(1)

    with pytest.raises(FormatError, match=r"the torch.fx graph of Shared computes something else than its forward"):
        export_model(Shared(), tmp_path / "x.hbnn", input_shape=[2, 2, 2])
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- graph validation

def _edit_inputs(name: str, inputs):
    def edit(h):
        next(r for r in h["layers"] if r["name"] == name)["inputs"] = inputs
    return edit


def _rename(old: str, new: str):
    def edit(h):
        next(r for r in h["layers"] if r["name"] == old)["name"] = new
    return edit


GRAPH_CASES = {
    "missing node": (_edit_inputs("a.add", ["a.conv2", "nowhere"]), r"\(a.add\): inputs: node 'nowhere' does not "
                                                                    r"exist \(a missing node\)"),
    "cycle": (_edit_inputs("a.conv1", ["a.add"]), r"\(a.conv1\): inputs: node 'a.add' is layer \d+, not an earlier "
                                                  r"one \(a cycle"),
    "self": (_edit_inputs("a.add", ["a.conv2", "a.add"]), r"\(a.add\): inputs: node 'a.add' is layer \d+, not an "
                                                          "earlier one"),
    "arity add": (_edit_inputs("a.add", ["a.conv2"]), r"\(a.add\): inputs: add takes 2 inputs, the record names 1"),
    "arity conv": (_edit_inputs("a.conv1", ["stem.0", "stem.2"]), r"\(a.conv1\): inputs: conv2d takes 1 inputs"),
    "not a list": (_edit_inputs("a.add", "a.conv2"), r"\(a.add\): inputs: invalid value 'a.conv2'; allowed: a list"),
    "not names": (_edit_inputs("a.add", [3, None]), r"\(a.add\): inputs: invalid value \[3, None\]"),
    "duplicate name": (_rename("a.conv1", "a.conv2"), r"name: 'a.conv2' is also layer \d+'s; node names are unique"),
    "reserved name": (_rename("stem.0", "input"), r"\(input\): name: invalid value 'input'"),
    "unused": (_edit_inputs("a.add", ["a.conv2", "a.conv2"]), r"\(a.shortcut.getitem\): its output is never used"),
    "shapes": (lambda h: next(r for r in h["layers"] if r["name"] == "a.shortcut.pad")["attrs"].update(after=0),
               r"\(a.add\): shapes do not chain on input_shape \[1, 12, 12\]: its input is \[N, 8, 6, 6\], it needs "
               r"two inputs of one shape \(the other input is \[N, 4, 6, 6\]\)"),
    "missing inputs": (lambda h: h["layers"][2].pop("inputs"), r"layer 2 \([^)]*\): inputs: missing"),
}


@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_bad_graphs_are_refused_in_one_line(case, exported, tmp_path, rewrite, refused, capsys):
    edit, pattern = GRAPH_CASES[case]
    path = tmp_path / "m.hbnn"
    path.write_bytes(exported["two_blocks"][2].read_bytes())
    if case == "unused":  # the pad reads the subsample; drop the pad from the add: getitem -> pad is then unused
        pattern = r"\(a.shortcut.pad\): its output is never used"
    rewrite(path, edit)
    refused(path, pattern, capsys)


def test_graph_ops_are_refused_in_version_2_files(tmp_path, exported, rewrite, refused, capsys):
    path = tmp_path / "m.hbnn"
    path.write_bytes(exported["two_blocks"][2].read_bytes())
    rewrite(path, lambda h: h.update(version=2))
    refused(path, r"unknown field|unknown layer op", capsys)


# ----------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, fabricate_fashion_mnist) -> Path:
    """A ResNet-20 (width 0.25, W1.4 A1.4, RESNET_QUANT rules) trained for one step on fabricated Fashion-MNIST."""
    from hbnn.cli import main

    root = tmp_path_factory.mktemp("resnet_run")
    data = fabricate_fashion_mnist(root / "fmnist")
    quant = json.dumps({"default": Q, **RESNET_QUANT})
    argv = ["train", "--data-dir", str(data), "--out", str(root / "run"), "--epochs", "1", "--batch-size", "16",
            "--quiet", "--set", "model.name=resnet20", "--set", "model.kwargs={width_mult: 0.25}",
            "--set", "run.tensorboard=false", "--set", f"quant={quant}", "--set", "train.limit_train_batches=1",
            "--set", "data.test_limit=32"]
    assert main(argv) == 0
    return root / "run"


def test_cli_exports_a_resnet20_run(resnet_run, tmp_path, capsys):
    from hbnn.cli import main

    out, onnx_out = tmp_path / "r.hbnn", tmp_path / "r.onnx"
    argv = ["export", str(resnet_run), "--out", str(out), "--json"]
    has_onnx = True
    try:
        import onnx  # noqa: F401
    except ImportError:
        has_onnx = False
    if has_onnx:
        argv += ["--onnx", str(onnx_out)]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["file_bytes"] == out.stat().st_size
    header = read_packed(out)[0]
    assert header["model"]["name"] == "resnet20" and [r["op"] for r in header["layers"]].count("add") == 9
    assert main(["infer", str(out), "--compare", str(resnet_run), "--limit", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 32 and result["compare"]["mismatches"] == 0
    assert main(["hw", "estimate", "--packed", str(out)]) == 0
    if has_onnx:
        assert onnx_out.stat().st_size > 0
