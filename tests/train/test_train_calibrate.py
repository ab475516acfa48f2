"""``hbnn calibrate RUN``: a sealed ``calibrated`` checkpoint of the same run; last/best untouched; bad input."""

from __future__ import annotations

import json

import pytest
import torch

from hbnn.cli import main
from hbnn.quant import ActQuantizer
from hbnn.train.rebuild import model_from_checkpoint

QUANT = "quant={default: {weight: {bits: 1.4}, act: {bits: 1.4}}}"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("hbnn: error: ")
    return err[0]


@pytest.fixture
def run_dir(tmp_path, tiny_args):
    out = tmp_path / "run"
    assert main(tiny_args(out, "--set", QUANT, "--set", "model.activation=hardtanh", epochs=1)) == 0
    return out


def test_calibrate_writes_a_checkpoint_of_the_same_run(run_dir, fmnist_dir, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["calibrate", str(run_dir), "--batches", "3", "--data-dir", str(fmnist_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["batches"], result["samples"], result["calibrated"]) == (3, 96, len(result["layers"]))
    assert all(r["kind_after"] == "realized" and r["batches"] == 3 for r in result["layers"])
    for name, data in before.items():  # last, best, config, run.json: unchanged
        assert (run_dir / name).read_bytes() == data, name
    src, src_ckpt = model_from_checkpoint(run_dir, "best")
    cal, cal_ckpt = model_from_checkpoint(run_dir, "calibrated")
    assert cal_ckpt.metadata["run_id"] == src_ckpt.metadata["run_id"]
    assert cal_ckpt.metadata["step"] == src_ckpt.metadata["step"] == result["step"]
    assert cal_ckpt.metadata["optimizer"] is None
    src_state, cal_state = src.state_dict(), cal.state_dict()
    act = {f"{n}.{b}" for n, m in cal.named_modules() if isinstance(m, ActQuantizer) for b, _ in m.named_buffers()}
    assert act and set(src_state) == set(cal_state)
    for key in src_state:
        if key not in act:
            assert torch.equal(src_state[key], cal_state[key]), key
    assert any(not torch.equal(src_state[k], cal_state[k]) for k in act)
    # eval, summary and export read it
    assert main(["eval", str(run_dir), "--which", "calibrated", "--data-dir", str(fmnist_dir), "--json",
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"].endswith("calibrated.safetensors")
    assert main(["summary", str(run_dir / "calibrated.safetensors"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"]["act_bits_kind"] == "realized"
    assert main(["export", str(run_dir), "--which", "calibrated", "--out", str(tmp_path / "m.hbnn")]) == 0


def test_calibrate_text_report_and_overwrite_removes_it(run_dir, fmnist_dir, tiny_args, capsys):
    capsys.readouterr()
    assert main(["calibrate", str(run_dir), "--batches", "1", "--which", "last", "--data-dir",
                 str(fmnist_dir)]) == 0
    out = capsys.readouterr().out
    assert "on 1 batches (32 samples)" in out and "calibrated.safetensors" in out and "from last" in out
    assert main(tiny_args(run_dir, "--set", QUANT, "--set", "model.activation=hardtanh", "--overwrite",
                          epochs=1)) == 0
    assert not (run_dir / "calibrated.safetensors").exists() and not (run_dir / "calibrated.json").exists()


@pytest.mark.parametrize("args, match", [
    (["--batches", "0"], "--batches 0 is invalid"),
    (["--data-dir", "/nonexistent/hbnn-data"], "nonexistent"),
])
def test_bad_input_one_line_exit_2(run_dir, args, match, capsys):
    capsys.readouterr()
    assert main(["calibrate", str(run_dir), *args]) == 2
    assert match in _error_line(capsys)
    assert not (run_dir / "calibrated.safetensors").exists()


def test_not_a_run_and_float_activations(tmp_path, tiny_args, fmnist_dir, capsys):
    assert main(["calibrate", str(tmp_path)]) == 2
    assert "is not an hbnn run directory" in _error_line(capsys)
    out = tmp_path / "w_only"
    assert main(tiny_args(out, "--set", "quant={default: {weight: {bits: 1.4}}}", epochs=1)) == 0
    capsys.readouterr()
    assert main(["calibrate", str(out), "--data-dir", str(fmnist_dir)]) == 2
    assert "no activation quantizer" in _error_line(capsys)
    assert not (out / "calibrated.safetensors").exists()
