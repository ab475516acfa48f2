"""$HBNN_KERNELS (auto / off / require), hbnn.kernels.build() / status() and ``hbnn kernels``."""

from __future__ import annotations

import argparse
import json
import warnings

import pytest
import torch

from hbnn.errors import ConfigError
from hbnn.kernels import (
    _build,
    available_backends,
    binary_conv2d,
    binary_conv2d_counts,
    binary_linear,
    build,
    cpu_features,
    pack_activations,
    pack_conv_input,
    pack_conv_weight,
    pack_planes,
    status,
)
from hbnn.kernels.commands import register
from hbnn.kernels.toolchain import format_status
from hbnn.quant import BitMix, make_bitmap
from hbnn.quant.bitmap import sampled_bitmap, threshold_bitmap
from hbnn.quant.keys import mean_magnitude


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A fresh build state (restored afterwards), an empty cache and a compiler that does not exist."""
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setenv("HBNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HBNN_CC", "/nonexistent/cc")
    monkeypatch.delenv("HBNN_KERNELS", raising=False)


def _outputs(gen: torch.Generator, planes) -> list[torch.Tensor]:
    """Kernel outputs and bit maps through every path that has a C fast path (backend "auto")."""
    w = pack_planes(*planes(gen, 2, (9, 150), True, per_row=True))
    x = pack_planes(*planes(gen, 3, (5, 150), True, per_row=False))
    xc, wc = planes(gen, 2, (2, 70, 6, 5), True, False), planes(gen, 2, (4, 70, 3, 3), True, True)
    act = torch.nn.functional.hardtanh(torch.randn(2, 70, 6, 5, generator=gen) * 1.5)
    big = torch.nn.functional.hardtanh(torch.randn(70_001, generator=gen) * 1.5)  # above the exact/sampled switch
    out = [binary_linear(x, w), binary_conv2d(pack_conv_input(*xc), pack_conv_weight(*wc), padding=1),
           binary_conv2d_counts(xc, wc, stride=2), pack_activations(act, torch.tensor([0.7, 0.3]),
                                                                    make_bitmap(act, 1.4)).signs, mean_magnitude(big)]
    mix = BitMix.from_average(1.4)
    for heuristic in ("middle_out", "bottom_up", "top_down"):
        out += [make_bitmap(big, mix, heuristic), make_bitmap(act, mix, heuristic),
                sampled_bitmap(big, mix, heuristic)[0], threshold_bitmap(big, mix, heuristic, [0.2, 0.5])]
    return out


def test_off_gives_the_same_outputs_as_auto_and_runs_no_compiler(planes, monkeypatch, tmp_path):
    with_auto = _outputs(torch.Generator().manual_seed(3), planes)
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setenv("HBNN_CC", "/nonexistent/cc")  # auto would warn; off must not even try
    monkeypatch.setenv("HBNN_KERNELS", "off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_off = _outputs(torch.Generator().manual_seed(3), planes)
        assert available_backends() == ("torch",)
        assert cpu_features()["error"] == "disabled by HBNN_KERNELS=off"
    assert _build._state == {}  # never built, never loaded
    assert len(with_auto) == len(with_off)
    for a, b in zip(with_auto, with_off):
        assert a.dtype == b.dtype and torch.equal(a, b)
    x = pack_planes(*planes(torch.Generator().manual_seed(0), 1, (2, 8), False, False))
    with pytest.raises(RuntimeError, match="HBNN_KERNELS=off"):
        binary_linear(x, x, backend="c")


def test_off_has_nothing_to_build(monkeypatch):
    monkeypatch.setenv("HBNN_KERNELS", "off")
    with pytest.raises(ConfigError, match="HBNN_KERNELS=off: the C kernels are disabled"):
        build()
    info = status()
    assert info["mode"] == "off" and info["library"] is None
    assert format_status(info).startswith("C kernels: off")


@pytest.mark.parametrize("value", ["on", "1", "requires"])
def test_bad_mode_is_a_one_line_config_error(monkeypatch, value):
    x = pack_planes(torch.ones(1, 2, 8, dtype=torch.bool), None, torch.ones(1))
    monkeypatch.setenv("HBNN_KERNELS", value)
    for call in (lambda: binary_linear(x, x), available_backends, build, status):
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == f"HBNN_KERNELS: expected one of auto, off, require, got {value!r}"


def test_mode_is_case_and_space_tolerant(monkeypatch):
    monkeypatch.setenv("HBNN_KERNELS", " Off ")
    assert _build.mode() == "off"
    monkeypatch.setenv("HBNN_KERNELS", "")
    assert _build.mode() == "auto"


def test_require_without_a_compiler_raises_one_line(no_compiler, monkeypatch):
    monkeypatch.setenv("HBNN_KERNELS", "require")
    x = pack_planes(torch.ones(1, 2, 8, dtype=torch.bool), None, torch.ones(1), backend="torch")
    for call in (lambda: binary_linear(x, x), lambda: make_bitmap(torch.randn(100), 1.4), build):
        with pytest.raises(ConfigError, match="HBNN_KERNELS=require: the C kernels did not build") as info:
            call()
        assert "\n" not in str(info.value) and "/nonexistent/cc" in str(info.value)


def test_build_fails_loudly_even_in_auto_mode(no_compiler):
    with pytest.raises(ConfigError, match="the C kernels did not build"):
        build()
    with pytest.warns(RuntimeWarning, match="pure-torch fallback"):  # the kernels themselves still fall back
        assert available_backends() == ("torch",)


def test_status_without_a_build(no_compiler):
    info = status()
    assert info["library"] is None and info["mode"] == "auto" and info["compiler"] == "/nonexistent/cc"
    assert "not built yet" in format_status(info)
    assert _build._state == {}  # status compiles nothing


def test_build_reports_the_library_and_variant(c_variants):
    info = build()
    assert info["library"].endswith("libhbnn_kernels.so") and info["compiled"] is False  # loaded already
    assert info["variants"] == c_variants and info["selected"] in c_variants and info["mode"] == "auto"
    assert status() == info
    text = format_status(info)
    assert f"C kernels: {info['selected']}" in text and "(cached)" in text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hbnn")
    register(parser.add_subparsers(dest="command"))
    return parser


@pytest.mark.parametrize("command", ["build", "status"])
def test_kernels_command(c_variants, capsys, command):
    args = _parser().parse_args(["kernels", command])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("C kernels: ") and "libhbnn_kernels.so" in out
    args = _parser().parse_args(["kernels", command, "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["variants"] == c_variants


def test_kernels_command_through_hbnn_main(c_variants, capsys, monkeypatch):
    from hbnn import cli

    if "hbnn.kernels.commands" not in getattr(cli, "COMMAND_MODULES", ()):
        pytest.skip("hbnn.kernels.commands is not registered in hbnn.cli yet")
    assert cli.main(["kernels", "build"]) == 0
    assert capsys.readouterr().out.startswith("C kernels: ")
    monkeypatch.setenv("HBNN_KERNELS", "maybe")
    assert cli.main(["kernels", "status"]) == 2
    assert capsys.readouterr().err == "hbnn: error: HBNN_KERNELS: expected one of auto, off, require, got 'maybe'\n"
