"""Bad input -> one FormatError line (CLI: exit 2): files, versions, shapes, unsupported layers."""

from __future__ import annotations

import struct

import pytest
import torch
from torch import nn

from hbnn.cli import main
from hbnn.errors import FormatError
from hbnn.export import SUPPORTED_LAYERS, export_model, load
from hbnn.nn import HBConv2d


@pytest.fixture
def packed(tmp_path, make_fc4):
    path = tmp_path / "m.hbnn"
    export_model(make_fc4({"weight": 1.4, "act": 1.4}), path, input_shape=[1, 12, 12])
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_truncated_and_corrupt_files(packed, tmp_path):
    with pytest.raises(FormatError, match="not found"):
        load(tmp_path / "nope.hbnn")
    data = packed.read_bytes()
    for cut in (4, 100, len(data) - 10):
        (tmp_path / "t.hbnn").write_bytes(data[:cut])
        with pytest.raises(FormatError, match="truncated") as exc:
            load(tmp_path / "t.hbnn")
        _one_line(exc)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # inside the last tensor's bytes
    (tmp_path / "c.hbnn").write_bytes(bytes(flipped))
    with pytest.raises(FormatError, match="checksum"):
        load(tmp_path / "c.hbnn")
    (tmp_path / "g.hbnn").write_bytes(struct.pack("<Q", 5) + b"{garb" + b"\0" * 10)
    with pytest.raises(FormatError, match="not an hbnn packed model"):
        load(tmp_path / "g.hbnn")


def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save

    (tmp_path / "f.safetensors").write_bytes(save({"x": torch.zeros(2)}))
    with pytest.raises(FormatError, match="not an hbnn packed model"):
        load(tmp_path / "f.safetensors")


def test_unknown_version_and_format(packed, rewrite):
    rewrite(packed, lambda h: h.update(version=99))
    with pytest.raises(FormatError, match="unknown format version 99; this hbnn reads versions 2, 3; a newer hbnn"):
        load(packed)
    for old in (1, True, 2.0, "2", 3.0):  # an older file says how to re-create it; True and 2.0 are not 1 and 2
        rewrite(packed, lambda h: h.update(version=old))
        with pytest.raises(FormatError, match=f"unknown format version {old!r}; this hbnn reads versions 2, 3; ") as exc:
            load(packed)
        assert ("`hbnn export RUN --out FILE`" in _one_line(exc)) == (type(old) is int)


def test_mismatched_tensor_shapes(packed, rewrite):
    rewrite(packed, edit_tensors=lambda t: t.update({"3.bias": torch.zeros(5)}))
    with pytest.raises(FormatError, match=r"layer 3 \(features.4\): tensor '3.bias' has torch.float32 \[5\]"):
        load(packed)


def test_sign_stream_of_the_wrong_length(packed, rewrite):
    rewrite(packed, edit_tensors=lambda t: t.update({"3.signs": t["3.signs"][:-1].clone()}))
    with pytest.raises(FormatError, match="words for"):
        load(packed)


def test_shapes_that_do_not_chain(packed, rewrite):
    def edit(h):
        h["layers"][0]["geometry"]["out_channels"] = 6  # and make the weight fit the record
    rewrite(packed, edit, lambda t: t.update({"0.weight": t["0.weight"][:6].clone(),
                                                "0.bias": t["0.bias"][:6].clone()}))
    with pytest.raises(FormatError, match=r"layer 3 \(features.4\): shapes do not chain on input_shape \[1, 12, 12\]: "
                                          r"its input is \[N, 6, 6, 6\], it needs 8 input channels"):
        load(packed)


def test_unknown_layer_op_lists_supported(packed, rewrite):
    from hbnn.export.validate import OPS

    rewrite(packed, lambda h: h["layers"][1].update(op="gelu"))
    with pytest.raises(FormatError, match=r"m.hbnn: layer 1 \(features.2\): unknown layer op 'gelu'; supported ops: "
                                          "conv2d, linear, batch_norm, relu, hardtanh") as exc:
        load(packed)
    assert _one_line(exc).endswith(", ".join(OPS))


def test_unsupported_models_at_export(tmp_path, make_fc4):
    model = make_fc4({"weight": 1, "act": 1})
    model.features[2] = nn.GELU()
    with pytest.raises(FormatError, match="type GELU is not supported by the packed format; supported layers: ") as exc:
        export_model(model, tmp_path / "x.hbnn")
    assert all(name in str(exc.value) for name in SUPPORTED_LAYERS)
    assert not (tmp_path / "x.hbnn").exists() and not list(tmp_path.iterdir())  # nothing half-written

    class Gated(nn.Module):  # a residual add and a product export (test_export_graph.py); a division does not
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return x / self.conv(x)

    with pytest.raises(FormatError, match="function operator.truediv in forward with a division of two tensors is "
                                          "not supported by the packed format"):
        export_model(Gated(), tmp_path / "r.hbnn")


def test_uncalibrated_or_non_elementwise_quantizers(tmp_path):
    layer = HBConv2d(2, 4, 3, weight_quant=1, act_quant=1)
    with pytest.raises(FormatError, match="never calibrated"):
        export_model(nn.Sequential(layer), tmp_path / "u.hbnn")
    layer = HBConv2d(2, 4, 3, weight_quant=1, act_quant={"bits": 1.4, "heuristic": "random"})
    layer.act_quantizer.num_batches_tracked.fill_(1)
    with pytest.raises(FormatError, match="heuristic='random'"):
        export_model(nn.Sequential(layer), tmp_path / "r.hbnn")
    layer = HBConv2d(2, 4, 3, padding="same", weight_quant=1)
    with pytest.raises(FormatError, match="integer zero padding"):
        export_model(nn.Sequential(layer), tmp_path / "p.hbnn")


def test_cli_bad_files_exit_2_with_one_line(packed, tmp_path, capsys):
    (tmp_path / "t.hbnn").write_bytes(packed.read_bytes()[:50])
    for argv in (["infer", str(tmp_path / "t.hbnn")], ["infer", str(tmp_path / "none.hbnn")],
                 ["export", str(tmp_path / "no_run"), "--out", str(tmp_path / "o.hbnn")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hbnn: error: "), err
