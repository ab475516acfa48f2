"""``hbnn hw plot``: accuracy vs estimated area/energy from JSONL result files."""

from __future__ import annotations

import json
import math

import pytest

from hbnn.cli import main
from hbnn.errors import ConfigError
from hbnn.hw.plot import cost_points, read_results, result_bits

RECORDS = [
    {"config": {"wbits": 1, "abits": 1}, "top1": 80.9},
    {"config": {"weight_bits": "70/20/10", "act_bits": 1.4}, "top1": 89.4},
    {"config": {"bits": 2}, "top1": 87.9},
    {"config": {"quant": {"default": {"weight": {"bits": 1.2}, "act": {"bits": 2}}}}, "top1": 86.0},
    {"config": {"lr": 0.1}, "top1": 50.0},  # no bits: skipped
    {"config": {"wbits": 1, "abits": 1}},  # no top1: skipped
]


def write_jsonl(path, records, extra=""):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n" + extra)
    return path


def test_result_bits_key_styles():
    assert [result_bits(r) for r in RECORDS[:5]] == [(1.0, 1.0), (1.4, 1.4), (2.0, 2.0), (1.2, 2.0), None]


def test_cost_points_use_the_paper_rules(tmp_path):
    points = cost_points(read_results(write_jsonl(tmp_path / "r.jsonl", RECORDS)))
    assert len(points) == 4
    p = points[3]
    assert p["bits"] == pytest.approx(math.sqrt(2.4))
    assert p["area_mm2"] == pytest.approx(6.06 * 2.4 / 4)
    assert p["energy_per_image_j"] == pytest.approx(3.6 * 2.4 / 21.9e3)  # W * b / (kFPS / b)


def test_cli_plot_writes_png_atomically(tmp_path, capsys):
    results, out = write_jsonl(tmp_path / "r.jsonl", RECORDS), tmp_path / "figs" / "acc.png"
    assert main(["hw", "plot", "--results", str(results), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "4 points" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["acc.png"]  # no temporary left behind


def test_cli_plot_errors(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", RECORDS, extra="{not json\n")
    assert main(["hw", "plot", "--results", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "line 8" in capsys.readouterr().err
    empty = write_jsonl(tmp_path / "empty.jsonl", RECORDS[4:])
    assert main(["hw", "plot", "--results", str(empty), "--out", str(tmp_path / "x.png")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert main(["hw", "plot", "--results", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(ConfigError, match="wbits"):
        result_bits({"config": {"wbits": 12, "abits": 1}})
