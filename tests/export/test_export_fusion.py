"""Fused execution plans (hbnn.export.fusion): which chains become one step, and that the plan
gives exactly the outputs of running the graph node by node (C kernels and the torch backend)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from hbnn.convert import quantize_
from hbnn.export import export_model, load
from hbnn.export.fusion import FusedEpilogue, clamp_of, fuse_epilogues
from hbnn.models import RESNET_QUANT, build_model
from hbnn.models._resnet_blocks import BasicBlock

Q = {"weight": 1, "act": 1}


def _quantize(model: nn.Module, **extra) -> nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="quantize_: new trainable parameters")
        quantize_(model, {"default": Q, **extra})
    return model


class BinaryShortcuts(nn.Module):
    """Two option-B blocks whose projection shortcuts are binarized too (both add inputs of the
    first block bit-serial), hardtanh activations (clamp -1..1)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardtanh())
        kw = dict(activation="hardtanh", shortcut="B", binarize_shortcut=True)
        self.a = BasicBlock(8, 16, 2, **kw)
        self.b = BasicBlock(16, 16, 1, **kw)
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier(self.b(self.a(self.stem(x))).mean((2, 3)))


def _export(model, shape, tmp_path, calibrated, name) -> object:
    calibrated(model, shape, batches=3, seed=1)
    export_model(model, tmp_path / f"{name}.hbnn", input_shape=list(shape))
    return tmp_path / f"{name}.hbnn"


@pytest.fixture(scope="module")
def resnet_path(tmp_path_factory, calibrator):
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3, image_size=8, width_mult=0.5)
    _quantize(model, **RESNET_QUANT)
    calibrator(model, (3, 8, 8), batches=3, seed=1)
    path = tmp_path_factory.mktemp("fusion") / "resnet20.hbnn"
    export_model(model, path, input_shape=[3, 8, 8])
    return path


def _same_as_node_by_node(engine, x) -> None:
    with torch.no_grad():
        fused = engine(x)
        with engine.node_by_node():
            plain = engine(x)
        again = engine(x)
    assert torch.equal(fused, plain) and torch.equal(again, fused)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_resnet20_fuses_every_conv_with_its_add_and_relu(resnet_path, backend):
    engine = load(resnet_path, backend=backend)
    fused = [st for st in engine.steps if isinstance(st.module, FusedEpilogue)]
    kinds = sorted(tuple(type(engine.layers[n]).__name__ for n in st.nodes) for st in fused)
    assert kinds.count(("PackedConv2d", "ReLU")) == 9  # conv1 -> act1
    assert kinds.count(("PackedConv2d", "AddInto", "ReLU")) == 9  # conv2 -> add -> act2
    assert all(st.module.clamp == (0.0, math.inf) for st in fused)
    assert len(engine.steps) == len(engine.layers) - 27  # 9 adds and 18 activations absorbed
    for seed in range(3):
        _same_as_node_by_node(engine, torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(seed)))


def test_plan_reads_only_values_it_computed(resnet_path):
    engine = load(resnet_path)
    made = {-1}
    for st in engine.steps:
        assert set(st.inputs) <= made, st
        made.add(st.node)


def test_both_add_inputs_binary(tmp_path, calibrated):
    torch.manual_seed(0)
    path = _export(_quantize(BinaryShortcuts(), keep_first=True, keep_last=True), (1, 12, 12), tmp_path,
                   calibrated, "shortcuts")
    engine = load(path)
    fused = [st for st in engine.steps if isinstance(st.module, FusedEpilogue)]
    adds = [st for st in fused if len(st.inputs) == 2]
    assert len(adds) == 2 and all(st.module.clamp == (-1.0, 1.0) for st in fused)
    # block a: conv2 and the binarized projection both feed the add; the first one in the graph takes it
    add_a = next(st for st in adds if any(engine.names[n] == "a.add" for n in st.nodes))
    other = [j for j in add_a.inputs[1:]]
    assert len(other) == 1 and any(st.node == other[0] and type(st.module).__name__ == "PackedConv2d"
                                   for st in engine.steps)
    for seed in range(3):
        _same_as_node_by_node(engine, torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("clamp", [None, (0.0, math.inf)])
def test_a_broadcast_residual_is_added_after_the_kernel(resnet_path, clamp):
    """Defensive path (the packed format only writes same-shape adds): a residual that would
    broadcast is added after the kernel, with the same values as the unfused ops."""
    engine = load(resnet_path)
    layer = next(m for m in engine.layers if getattr(m, "binary", False))
    c = layer.weight.shape[1]
    x = torch.randn(2, c, 8, 8, generator=torch.Generator().manual_seed(3))
    r = torch.randn(2, layer.weight.shape[0], 1, 1, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = layer(x) + r
        want = want if clamp is None else torch.clamp(want, *clamp)
        got = FusedEpilogue(layer, clamp, ("conv",))(x, r)
    assert torch.equal(got, want)


def test_hooks_fire_node_by_node(resnet_path):
    engine = load(resnet_path)
    act = next(m for m in engine.layers if type(m) is nn.ReLU and m is not engine.layers[1])
    calls = []
    handle = act.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            engine(torch.zeros(1, 3, 8, 8))
            assert calls == []  # absorbed into a fused step
            with engine.node_by_node():
                engine(torch.zeros(1, 3, 8, 8))
            assert calls == [1]
    finally:
        handle.remove()
    assert any(isinstance(st.module, FusedEpilogue) for st in engine.steps)  # the plan is back


def test_clamp_of_activations():
    assert clamp_of(nn.ReLU()) == (0.0, math.inf)
    assert clamp_of(nn.ReLU(inplace=True)) == (0.0, math.inf)
    assert clamp_of(nn.Hardtanh(-2.0, 0.5)) == (-2.0, 0.5)
    assert clamp_of(nn.ReLU6()) is None and clamp_of(nn.LeakyReLU()) is None


def test_a_graph_without_binary_layers_is_its_own_plan(tmp_path, calibrated):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    path = _export(model, (1, 6, 6), tmp_path, calibrated, "float")
    engine = load(path)
    assert [st.nodes for st in engine.steps] == [(i,) for i in range(len(engine.layers))]
    assert [st.nodes for st in fuse_epilogues(engine)] == [(i,) for i in range(len(engine.layers))]
