"""Figures and tables from synthetic result files only (no training)."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from hbnn.experiments.results import append_result  # noqa: E402
from research.cli import main  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def write(path, lines):
    for line in lines:
        append_result(path, line)
    return path


def fig2a_lines():
    out = []
    for h, errs in (("middle_out", (0.45, 0.33)), ("random", (0.58, 0.53)), (None, (0.60, 0.36))):
        for avg, err in zip((1.1, 1.4) if h else (1, 2), errs):
            out.append({"kind": "fig2a", "figure": "fig2a", "run": f"fig2a/{h}-{avg}/seed0", "point": f"{h}-{avg}",
                        "seed": 0, "heuristic": h, "avg_bits": avg, "error": err + 0.004, "paper": err})
    return out


@pytest.fixture
def results(tmp_path, make_lines):
    folder = tmp_path / "results"
    files = {
        "fig2a": fig2a_lines(),
        "fig2b": make_lines("fig2b", {"w1": ({"weight": 1, "label": "1 bit"}, [0.70, 0.71, 0.69]),
                                      "w2": ({"weight": 2, "label": "2 bit"}, [0.80, 0.81, 0.79]),
                                      "w1.4_mo": ({"weight": 1.4, "label": "MO"}, [0.79, 0.80, 0.78]),
                                      "w1.4_td": ({"weight": 1.4, "heuristic": "top_down"}, [0.72, 0.73, 0.74])}),
        "fig3b": make_lines("fig3b", {f"w{b}": ({"weight": b}, [0.70 + 0.1 * (b - 1) ** 0.3])
                                      for b in (1, 1.2, 1.4, 1.6, 2)}),
        "fig3a": make_lines("fig3a", {f"layer{b}": ({"layer_bits": b, "_bits": b + 0.02}, [0.70 + 0.1 * (b - 1)])
                                      for b in (1.0, 1.3, 1.7)}),
        "mix": make_lines("mix", {"m70-20-10": ({"weight": "70/20/10"}, [0.8, 0.81]),
                                  "m80-0-20": ({"weight": "80/0/20"}, [0.8, 0.79])}),
        "block": make_lines("block", {f"block{k}": ({"weight": 1.4, "block": k}, [0.8 - k / 1e4]) for k in (1, 8)}),
        "pilot": make_lines("pilot", {"fp": ({}, [0.9, 0.91]), "w1a1": ({"weight": 1, "act": 1}, [0.7, 0.72])}),
        "table1": make_lines("table1", {"fp": ({"label": "FP/FP", "paper": 56.5}, [0.9, 0.91, 0.9]),
                                        "w2a2": ({"weight": 2, "act": 2, "label": "2/2"}, [0.8, 0.81, 0.8])}),
    }
    for name, lines in files.items():
        write(folder / f"{name}.jsonl", lines)
    return folder


@pytest.mark.parametrize("name", ["fig2a", "fig2b", "fig3b", "fig3a", "mix", "block", "pilot", "table1"])
def test_plot_writes_png(results, tmp_path, name, capsys):
    out = tmp_path / "figures"
    assert main(["plot", name, "--results", str(results / f"{name}.jsonl"), "--out", str(out)]) == 0
    png = out / f"{name}.png"
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    assert str(png) in capsys.readouterr().out
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic: no temp files left
    if name == "table1":
        assert "| FP/FP | FP | FP | 90.33 ± 0.58 |" in (out / "table1.md").read_text()


def test_markdown_table(results, capsys):
    assert main(["plot", "fig2b", "--results", str(results / "fig2b.jsonl"), "--markdown"]) == 0
    text = capsys.readouterr().out
    assert "| MO | 1.4 | FP | 79.00 ± 1.00 | 84.00 | 3 |" in text


def test_pilot_markdown_has_gaps_in_seed_std(results, capsys):
    assert main(["plot", "pilot", "--results", str(results / "pilot.jsonl"), "--markdown"]) == 0
    text = capsys.readouterr().out
    # fp 90.5 +- 0.71 vs 1/1 71.0 +- 1.41: 19.5 points = 17.4 pooled seed std
    assert "| fp | w1a1 | +19.50 | +17.4 |" in text


def test_verdicts_command(results, capsys):
    assert main(["plot", "verdicts", "--results-dir", str(results)]) == 0
    text = capsys.readouterr().out
    assert text.count("| (") == 5 and "did not hold" in text  # (v): table1 has no 1.4/1.4 row -> not run
    assert "not run" in text


def test_missing_results_file_is_a_user_error(tmp_path, capsys):
    assert main(["plot", "fig2b", "--results", str(tmp_path / "none.jsonl")]) == 2
    assert "hbnn sweep fig2b" in capsys.readouterr().err
