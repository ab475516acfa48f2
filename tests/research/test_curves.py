"""Seed-mean test curves (research.curves), from synthetic curve lines."""

from __future__ import annotations

import json
import statistics

import pytest

from hbnn.errors import ConfigError
from research.cli import main
from research.curves import curves_markdown, mean_curves, plot_curves


def _curve(run, top1, lr=(0.1, 0.05, 0.01, 0.0)):
    return {"run": run, "config_sha": "x", "epoch": list(range(1, len(top1) + 1)), "test_top1": list(top1),
            "train_top1": list(top1), "lr": list(lr)[: len(top1)]}


@pytest.fixture
def curves(tmp_path):
    lines = [_curve("long_fig2b/w2/seed0", [0.5, 0.6, 0.7, 0.8]),
             _curve("long_fig2b/w2/seed1", [0.5, 0.7, 0.8, 0.9]),
             _curve("long_fig2b/w1/seed0", [0.4, 0.5, 0.6, 0.7]),
             _curve("long_fig2b/w1/seed1", [0.4, 0.5, 0.6]),  # other schedule: left out
             _curve("mid_table1/w2a2/seed0", [0.3, 0.4])]
    path = tmp_path / "curves.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_mean_curves_average_seeds_per_point(curves):
    got = {(c.experiment, c.point): c for c in mean_curves(curves)}
    w2 = got[("long_fig2b", "w2")]
    assert w2.seeds == 2 and w2.epochs == (1, 2, 3, 4)
    assert w2.top1 == pytest.approx((50.0, 65.0, 75.0, 85.0), abs=1e-12)
    assert w2.sd_last == pytest.approx(statistics.stdev([80.0, 90.0]), abs=1e-12)
    assert w2.tail_gain(3) == pytest.approx(35.0, abs=1e-12)
    assert w2.tail_gain(1) == pytest.approx(10.0, abs=1e-12)
    assert w2.head_gain(2) == pytest.approx(25.0, abs=1e-12)
    assert w2.head_gain(4) == pytest.approx(35.0, abs=1e-12)  # shorter curve: up to its last epoch
    assert w2.lr_last == 0.0
    assert got[("long_fig2b", "w1")].seeds == 1  # the 3-epoch run has another schedule
    assert got[("mid_table1", "w2a2")].tail_gain(3) == pytest.approx(10.0, abs=1e-12)  # whole curve


def test_markdown_has_one_row_per_point(curves):
    text = curves_markdown(curves)
    assert text.count("\n") == 4
    assert "| long_fig2b | w2 | 2 | 4 | 85.00 | 7.07 | +35.00 | +35.00 | 0 |" in text


def test_figure_is_written_and_cli_prints_its_path(curves, tmp_path, capsys):
    path = plot_curves(curves, tmp_path / "out" / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", "curves", "--results", str(curves), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "training_curves.png").is_file()


def test_missing_or_empty_curves_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="no curves"):
        plot_curves(empty, tmp_path / "c.png")
    assert main(["plot", "curves", "--results", str(tmp_path / "nope.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
