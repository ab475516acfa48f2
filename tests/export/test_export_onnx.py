"""ONNX export: standard ops only, onnxruntime gives the packed engine's predictions."""

from __future__ import annotations

import pytest
import torch

from hbnn.export import export_model, load, to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ALLOWED = {"Abs", "Sub", "Neg", "Greater", "Cast", "Mul", "Add", "Where", "Conv", "Gemm", "Clip", "Relu",
           "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "BatchNormalization", "Identity"}


def _run(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


@pytest.mark.parametrize("quant, fold", [({"weight": 1.4, "act": 1.4}, True), ({"weight": 2, "act": 2}, False),
                                         ({"weight": {"bits": 1.4, "per_channel": True},
                                           "act": {"bits": 1.4, "heuristic": "top_down"}}, True)])
def test_onnxruntime_matches_packed_and_model(quant, fold, tmp_path, make_fc4, parity):
    model = make_fc4(quant, keep_last=False)  # binarized classifier with its output scale too
    export_model(model, tmp_path / "m.hbnn", input_shape=[1, 12, 12], fold_bn=fold)
    engine = load(tmp_path / "m.hbnn")
    to_onnx(tmp_path / "m.hbnn", tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert {n.op_type for n in proto.graph.node} <= ALLOWED
    x = torch.randn(24, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    got = _run(tmp_path / "m.onnx", x)
    with torch.no_grad():
        parity(engine(x), got)
        parity(model(x), got)


def test_onnx_batch_is_dynamic(tmp_path, make_fc4):
    export_model(make_fc4({"weight": 1, "act": 1}), tmp_path / "m.hbnn", input_shape=[1, 12, 12])
    to_onnx(load(tmp_path / "m.hbnn"), tmp_path / "m.onnx")
    for batch in (1, 5):
        assert _run(tmp_path / "m.onnx", torch.randn(batch, 1, 12, 12)).shape == (batch, 10)
