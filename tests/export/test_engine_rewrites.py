"""The engine's speed rewrites are exact: narrow-row packing, in-place residual adds, the 2x2 max-pool."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hbnn.convert import quantize_
from hbnn.export import export_model, load
from hbnn.export.engine import (AddInto, MaxPool2x2, PackedConv2d, PackedLayer, PackedModel, make_act_quantizer,
                               optimize_graph)
from hbnn.export.ops import Add, Subsample
from hbnn.kernels import available_backends, pack_activations
from hbnn.models import RESNET_QUANT, build_model

BACKENDS = available_backends()


def _act(bits, fractions, structure="entry"):
    n = max(bits)
    return make_act_quantizer(bits, fractions, "middle_out", torch.tensor([0.8, 0.3, 0.1])[:n],
                              torch.tensor([0.4, 0.9])[: len(bits) - 1], torch.tensor(0.6), structure)


def _binary_conv(c: int, act, backend: str) -> PackedConv2d:
    gen = torch.Generator().manual_seed(c)
    signs = torch.rand(1, 4, c, 3, 3, generator=gen) > 0.5
    masks = torch.ones_like(signs)
    w = torch.where(signs[0], 0.5, -0.5)
    return PackedConv2d(w, (signs, masks, torch.tensor([0.5])), act, None, None, stride=(1, 1), padding=(1, 1),
                        dilation=(1, 1), groups=1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [1, 8, 16, 32, 48])
@pytest.mark.parametrize("act", [((1,), (1.0,), "entry"), ((2,), (1.0,), "entry"),
                                 ((1, 2, 3), (0.7, 0.2, 0.1), "entry"), ((1, 2, 3), (0.7, 0.2, 0.1), "pixel")])
def test_packed_input_words_equal_row_by_row_packing(backend, c, act):
    """pack_input of a channels-last input (narrow rows, C | 64, binarized 64/C at a time in C)
    gives the words, masks and counts of the torch packer run row by row on its NHWC rows."""
    layer = _binary_conv(c, _act(*act), backend)
    gen = torch.Generator().manual_seed(2)
    for b in (64, 3):  # 1600 rows: merged for every C | 64; 75: row by row
        x = torch.randn(b, c, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)
        want = pack_activations(rows, layer.act.running_scales, layer.act.running_bitmap(rows), backend="torch")
        got = layer.pack_input(x)
        assert torch.equal(got.signs, want.signs) and got.full == want.full and torch.equal(got.scales, want.scales)
        assert (got.masks is None) == (want.masks is None)
        if want.masks is not None:
            assert torch.equal(got.masks, want.masks)
        assert got.shape == (b, 5, 5, c)


def test_max_pool_2x2_is_the_pool_including_nan_inf_ties_and_odd_sides():
    gen = torch.Generator().manual_seed(0)
    pool = MaxPool2x2()
    for h, w in [(8, 8), (7, 9), (2, 3)]:
        x = torch.randint(-3, 3, (2, 5, h, w), generator=gen).float()  # many ties
        x[0, 0, 0, 0], x[0, 1, 1, 1], x[1, 2, 0, 1] = float("nan"), float("inf"), -float("inf")
        for layout in (torch.channels_last, torch.contiguous_format):
            xl = x.contiguous(memory_format=layout)
            want, got = F.max_pool2d(xl, 2), pool(xl)
            assert torch.equal(torch.isnan(got), torch.isnan(want))
            assert torch.equal(got.nan_to_num(), want.nan_to_num()) and got.shape == want.shape
    assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 2 and pool.stride == 2  # ONNX reads it as one


def test_add_into_writes_the_sum_into_the_chosen_input():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    want = a + b
    for into in (0, 1):
        xs = [a.clone(), b.clone()]
        out = AddInto(into)(*xs)
        assert torch.equal(out, want) and out.data_ptr() == xs[into].data_ptr()
        assert torch.equal(xs[1 - into], (a, b)[1 - into])  # the other input untouched
    row = torch.randn(1, 3, 1, 1, generator=gen)
    assert torch.equal(AddInto(1)(a, row), a + row) and torch.equal(row, row.clone())  # would broadcast: a + b


def _graph(inputs, mods):
    return optimize_graph([(f"n{i}", m) for i, m in enumerate(mods)], inputs)


def test_adds_run_in_place_only_on_fresh_values_read_once():
    conv = lambda: nn.Conv2d(2, 2, 1)  # noqa: E731
    # 0 conv(x); 1 relu(0); 2 conv(1); 3 add(2, 1): 1 is read twice, 2 once -> into 2 (index 0)
    out = _graph([[-1], [0], [1], [2, 1]], [conv(), nn.ReLU(), conv(), Add()])
    assert isinstance(out[3][1], AddInto) and out[3][1].into == 0
    # the model input is never written; a value read twice by the same add neither
    out = _graph([[-1], [-1, 0], [1, 1]], [conv(), Add(), Add()])
    assert isinstance(out[1][1], AddInto) and out[1][1].into == 1
    assert type(out[2][1]) is Add
    # a view (identity, subsample) is not fresh: neither an add nor an activation writes into it
    out = _graph([[-1], [0], [-1, 1]], [conv(), nn.Identity(), Add()])
    assert type(out[2][1]) is Add
    out = _graph([[-1], [0], [1]], [conv(), Subsample(2), nn.ReLU()])
    assert not out[2][1].inplace
    # only 2x2/2 pools without padding become MaxPool2x2
    out = _graph([[-1], [0], [1]], [nn.MaxPool2d(2), nn.MaxPool2d(3, 2), nn.MaxPool2d(2, padding=1)])
    assert [type(m) for _, m in out] == [MaxPool2x2, nn.MaxPool2d, nn.MaxPool2d]


def _plain(engine: PackedModel) -> PackedModel:
    """The engine without the rewrites tested here (plain add, pool and out-of-place activations)."""
    def undo(m):
        if isinstance(m, AddInto):
            return Add()
        if isinstance(m, MaxPool2x2):
            return nn.MaxPool2d(2)
        if isinstance(m, nn.ReLU):
            return nn.ReLU()
        if isinstance(m, nn.Hardtanh):
            return nn.Hardtanh(m.min_val, m.max_val)
        return m

    return PackedModel([(n, undo(m)) for n, m in engine.named_layers()], engine.header, engine.inputs)


def _calibrated(name, quant, shape, **kwargs):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=shape[0], image_size=shape[1], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(model, quant)
    model.train()
    with torch.no_grad():
        for chunk in torch.randn(32, *shape, generator=torch.Generator().manual_seed(1)).split(8):
            model(chunk)
    return model.eval()


@pytest.mark.parametrize("name, kwargs, rules", [
    ("resnet20", {"width_mult": 0.5}, RESNET_QUANT),  # 8, 16, 32 channels: every width packs narrow
    ("cifar_fc4", {"widths": (8, 16, 24), "activation": "hardtanh"}, {}),  # 2x2 pools; 24 packs row by row
])
@pytest.mark.parametrize("layer", [{"weight": 1, "act": 1}, {"weight": 2, "act": 2},
                                   {"weight": 1.4, "act": {"bits": 1.4, "structure": "pixel"}}])
def test_rewritten_engine_is_bit_identical_to_the_plain_graph(name, kwargs, rules, layer, tmp_path):
    shape = (3, 8, 8)
    model = _calibrated(name, {"default": layer, **rules}, shape, **kwargs)
    export_model(model, tmp_path / "m.hbnn", input_shape=list(shape))
    engine = load(tmp_path / "m.hbnn")
    kinds = {type(m) for _, m in engine.named_layers()}
    assert (AddInto in kinds) == (name == "resnet20") and (MaxPool2x2 in kinds) == (name == "cifar_fc4")
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(engine(x), _plain(engine)(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_layers_reuse_their_output_memory_with_equal_results(backend):
    """A binary layer writes every call into the same buffer (per thread): same results as a
    fresh allocation, same memory on the second call, a new buffer when the batch changes."""
    layer = _binary_conv(16, _act((1, 2), (0.6, 0.4)), backend)
    gen = torch.Generator().manual_seed(3)
    x1, x2 = (torch.randn(4, 16, 6, 6, generator=gen).contiguous(memory_format=torch.channels_last) for _ in "ab")
    fresh = _binary_conv(16, _act((1, 2), (0.6, 0.4)), backend)
    fresh.reuse_output = False
    y1 = layer(x1)
    want1 = y1.clone()
    y2 = layer(x2)
    assert torch.equal(y2, fresh(x2)) and torch.equal(want1, fresh(x1))
    if backend == "c":
        assert y1.data_ptr() == y2.data_ptr()  # the first output was overwritten in place
        assert layer(x1[:2]).data_ptr() != y2.data_ptr()  # another size: another buffer
    assert fresh(x1).data_ptr() != fresh(x1).data_ptr() or backend == "torch"


def test_model_output_in_a_reused_buffer_is_returned_as_a_copy():
    """When the last node is a binary layer its buffer is reused, so the engine hands out a
    copy: an earlier output stays as it was after later calls."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.Hardtanh(), nn.Linear(32, 10))
    quantize_(model, {"default": {"weight": 1, "act": 1}, "keep_last": False})
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 3, 4, 4))
    model.eval()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, Path(tmp) / "m.hbnn", input_shape=[3, 4, 4])
        engine = load(Path(tmp) / "m.hbnn")
    last = engine.layers[-1]
    assert isinstance(last, PackedLayer) and last.binary
    x1, x2 = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    out1 = engine(x1)
    kept = out1.clone()
    out2 = engine(x2)
    assert torch.equal(out1, kept) and not torch.equal(out1, out2)
    assert all(out2.untyped_storage().data_ptr() != b.untyped_storage().data_ptr() for b in last.output_buffers())
    with torch.no_grad():
        assert torch.equal(engine(x1), kept)
