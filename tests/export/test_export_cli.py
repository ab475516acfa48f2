"""``hbnn export`` / ``hbnn infer`` end to end on a tiny trained run (the benchmark: tests/test_bench_infer.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hbnn.cli import main
from hbnn.export import read_packed


@pytest.fixture(scope="module")
def run(trained_run):
    """The session's finished 1-epoch W1.4 A1.4 run (see ``conftest.trained_run``)."""
    return trained_run


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


def test_infer_options(run, packed_run, capsys):
    assert main(["infer", str(packed_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 64 and "compare" not in result
    assert main(["infer", str(packed_run), "--limit", "16", "--batch-size", "8"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{packed_run}: cifar_fc4 packed") and "(16 images)" in text and "\nvs" not in text


def test_infer_compare_with_last_checkpoint(run, packed_run, capsys):
    assert main(["infer", str(packed_run), "--compare", str(run), "--which", "last", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["compare"]["checkpoint"] == str(run) and result["compare"]["mismatches"] == 0
    assert main(["infer", str(packed_run), "--compare", str(run)]) == 0
    assert f"\nvs {run}: top1" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["eval"], "eval: give a RUN_DIR or CHECKPOINT (a packed file: hbnn infer FILE)"),
    (["infer", "missing.hbnn"], "packed model not found: missing.hbnn"),
])
def test_eval_bad_arguments_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hbnn: error: ") and message in err and err.count("\n") == 1


def test_import_hbnn_does_not_import_export():
    code = "import sys, hbnn; assert 'hbnn.export' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True
