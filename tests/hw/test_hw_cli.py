"""``hbnn hw estimate`` end to end: built-in nets, registry models, trained runs, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hbnn.cli import main
from hbnn.hw import estimate_module


def run_json(capsys, *argv):
    assert main(["hw", "estimate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def error(capsys, *argv):
    assert main(["hw", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hbnn: error: ") and err.count("\n") == 1
    return err


def test_builtin_net_json(capsys):
    report = run_json(capsys, "--model", "vgg8", "--wbits", "1.4")
    assert report["estimate"] is True and "ESTIMATE" in report["label"]
    assert report["network"]["macs"] == 59_461_376 and report["network"]["bits"] == pytest.approx(1.4)
    by_name = {p["platform"]: p for p in report["platforms"]}
    fpga = by_name["zc706"]
    assert fpga["paper_scaling"]["occupancy"] == pytest.approx(0.2968)  # Table 2 row 5
    assert fpga["paper_scaling"]["kfps"] == pytest.approx(21.9 / 1.4)
    assert fpga["dataflow"]["occupancy"] <= 0.2968
    asic = by_name["alemdar2017"]["paper_scaling"]
    assert asic["area_mm2"] == pytest.approx(6.06 * 0.49) and "dataflow" not in by_name["alemdar2017"]
    for entry in (fpga["paper_scaling"], fpga["dataflow"], asic):
        assert entry["energy_per_image_j"] == pytest.approx(entry["watts"] / (entry["kfps"] * 1e3))
    ops = report["ops"]
    assert ops["binary_passes"] == pytest.approx((59_461_376 - 1_555_200) * 1.96)


def test_text_output_is_labelled(capsys):
    assert main(["hw", "estimate", "--model", "finn_cnv", "--wbits", "70/20/10", "--abits", "2", "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ESTIMATE") and "xnor-popcount" in out and "conv6" in out and "dataflow" in out


def test_mobilenet_notes_the_papers_op_ratio(capsys):
    report = run_json(capsys, "--model", "mobilenet", "--wbits", "1", "--platform", "alemdar2017")
    assert [p["platform"] for p in report["platforms"]] == ["alemdar2017"]
    assert "op ratio of 49" in report["notes"][0]


def test_unfolding_past_the_device_is_capped_and_said(capsys):
    report = run_json(capsys, "--model", "vgg8", "--wbits", "2", "--unfold", "8", "--platform", "zc706")
    scaling = report["platforms"][0]["paper_scaling"]
    assert scaling["capped"] and scaling["occupancy"] == 1.0
    assert scaling["requested_occupancy"] == pytest.approx(0.212 * 2 * 8)
    assert "capped at 100%" in scaling["notes"][0]
    assert main(["hw", "estimate", "--model", "vgg8", "--wbits", "2", "--unfold", "8"]) == 0
    assert "capped at 100%" in capsys.readouterr().out


class _Small(nn.Module):
    def __init__(self, **_):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.c(self.b(self.a(x)).flatten(1))


def test_registry_model_with_bit_config(capsys, monkeypatch):
    import hbnn.models

    monkeypatch.setattr(hbnn.models, "build_model", lambda name, **kw: _Small(**kw))
    argv = ["--model", "small", "--wbits", "2", "--abits", "1", "--image-size", "8", "--per-layer"]
    report = run_json(capsys, *argv, "--platform", "alemdar2017")
    layers = report["layers"]
    assert [(p["wbits"], p["abits"], p["quantized"]) for p in layers] == [(32.0, 32.0, False), (2.0, 1.0, True), (32.0, 32.0, False)]
    assert [p["macs"] for p in layers] == [4 * 27 * 36, 4 * 36 * 16, 10 * 64]
    report = run_json(capsys, "--model", "small", "--wbits", "2", "--image-size", "8", "--no-keep-first", "--per-layer")
    assert report["layers"][0]["quantized"] and report["layers"][0]["wbits"] == 2.0


def test_registry_vgg8_cnv_end_to_end(capsys):
    report = run_json(capsys, "--model", "vgg8_cnv", "--wbits", "1.4", "--abits", "1.4", "--platform", "zc706")
    assert report["network"]["macs"] == 59_461_376
    assert report["network"]["bits"] == pytest.approx(1.4, abs=0.01)
    assert report["network"]["float_mac_share"] == pytest.approx((1_555_200 + 5120) / 59_461_376)


def test_unknown_model_lists_workloads_and_registered_models(capsys):
    err = error(capsys, "estimate", "--model", "resnet99", "--wbits", "1")
    assert "'resnet99' is not a built-in workload or registered model" in err
    assert "vgg8," in err and "cifar_fc4" in err  # a built-in workload and a registered model


def test_float_model_needs_bits(capsys, monkeypatch):
    import hbnn.models

    monkeypatch.setattr(hbnn.models, "build_model", lambda name, **kw: _Small(**kw))
    assert "no layer has both" in error(capsys, "estimate", "--model", "small", "--image-size", "8")
    assert "needs --wbits" in error(capsys, "estimate", "--model", "vgg8")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--wbits", "1", "--platform", "tpu"], "unknown platform 'tpu'; known: alemdar2017, zc706"),
        (["--wbits", "9"], "wbits: expected bits in [1, 8]"),
        (["--wbits", "0"], "wbits: expected bits in [1, 8]"),
        (["--wbits", "1", "--abits", "-2"], "abits: expected bits in [1, 8]"),
        (["--wbits", "1", "--unfold", "0"], "unfolding: expected a number > 0"),
        (["--wbits", "1", "--unfold", "-1"], "unfolding: expected a number > 0"),
        (["--wbits", "1", "--lut-budget", "1.5"], "lut_budget: expected a fraction in (0, 1]"),
        (["--wbits", "1", "--lut-budget", "0.01"], "even fully folded"),
        (["--wbits", "banana"], "wbits"),
    ],
)
def test_bad_input_exits_2(capsys, argv, message):
    assert message in error(capsys, "estimate", "--model", "vgg8", *argv)


def test_run_and_packed_bad_paths(capsys, tmp_path):
    nope = tmp_path / "nope"
    assert f"run: {str(nope)!r} does not exist" in error(capsys, "estimate", "--run", str(nope))
    assert f"packed: {str(nope)!r} does not exist" in error(capsys, "estimate", "--packed", str(nope))
    assert "drop --wbits" in error(capsys, "estimate", "--run", str(tmp_path), "--wbits", "1")


def test_run_model_feeds_the_estimate(capsys, tmp_path, monkeypatch, tiny_net):
    import types

    import hbnn.train.rebuild

    seen = []
    ckpt = types.SimpleNamespace(metadata={"model": {"num_classes": 10, "in_channels": 3, "image_size": 8}})
    monkeypatch.setattr(hbnn.train.rebuild, "model_from_checkpoint", lambda path: (seen.append(path), (tiny_net, ckpt))[1])
    report = run_json(capsys, "--run", str(tmp_path), "--platform", "zc706")
    assert seen == [tmp_path]
    assert report["network"]["macs"] == 16256
    assert report["network"]["bits"] == pytest.approx((1152 * 2 + 1280 * 1.5) / (1152 + 1280))


def test_estimate_module_api(tiny_net):
    report = estimate_module(tiny_net, (3, 8, 8), platforms=["alemdar2017"], per_layer=True)
    assert report["estimate"] and len(report["layers"]) == 3
    assert report["platforms"][0]["op_ratio"] == pytest.approx(16256 / 59_461_376)
    assert report["network"]["weight_memory_bits"] == 8 * 27 * 32 + 8 * 9 * 2 + 1280 * 1.5
    with torch.no_grad():
        assert tiny_net(torch.zeros(1, 3, 8, 8)).shape == (1, 10)
