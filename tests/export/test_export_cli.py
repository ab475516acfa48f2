"""``hbnn export`` / ``hbnn infer`` / ``hbnn bench infer`` end to end on a tiny trained run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hbnn.cli import main
from hbnn.export import read_packed

QUANT = "quant={default: {weight: {bits: 1.4}, act: {bits: 1.4}}}"


@pytest.fixture(scope="module")
def run(tmp_path_factory, fabricate_fashion_mnist):
    """A finished 1-epoch W1.4 A1.4 run on fabricated Fashion-MNIST (192 train / 64 test images)."""
    root = tmp_path_factory.mktemp("export_cli")
    data = fabricate_fashion_mnist(root / "fmnist")
    out = root / "run"
    argv = ["train", "--data-dir", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "32", "--quiet",
            "--set", "model.kwargs={widths: [8, 16, 16]}", "--set", "run.tensorboard=false",
            "--set", QUANT, "--set", "model.activation=hardtanh"]
    assert main(argv) == 0
    return out


def test_export_then_infer_matches_the_run(run, tmp_path, capsys):
    out, onnx_out = tmp_path / "m.hbnn", tmp_path / "m.onnx"
    argv = ["export", str(run), "--out", str(out), "--json"]
    if _has_onnx():
        argv += ["--onnx", str(onnx_out)]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["file_bytes"] == out.stat().st_size and report["model"]["compression"] > 1
    header, _, _ = read_packed(out)
    assert header["model"]["name"] == "cifar_fc4" and header["meta"]["data"]["name"] == "fashion_mnist"
    assert header["input_shape"] == [1, 28, 28] and header["meta"]["source"]["epoch"] == 1
    assert main(["infer", str(out), "--compare", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 64 and result["compare"]["mismatches"] == 0
    assert result["top1"] == result["compare"]["top1"]
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == result["top1"]
    if _has_onnx():
        assert onnx_out.stat().st_size > 0


def test_export_prints_the_size_table(run, tmp_path, capsys):
    assert main(["export", str(run), "--which", "last", "--out", str(tmp_path / "m.hbnn")]) == 0
    text = capsys.readouterr().out
    assert "bits/parameter stored" in text and "features.4" in text


def test_bench_infer_quick_prints_json(capsys):
    assert main(["bench", "infer", "--quick", "--cases", "W1A1", "--batch", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    case = result["cases"][0]
    assert case["config"] == "W1A1" and case["mismatches"] == 0 and case["packed_ms"] > 0
    assert set(case["profile_ms"]) == {"float_layers", "act_binarize_pack", "binary_kernels", "other"}


def test_import_hbnn_does_not_import_export():
    code = "import sys, hbnn; assert 'hbnn.export' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True
