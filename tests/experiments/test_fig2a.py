"""Fig. 2a through the sweep runner: paper cells within +-0.02, lines, skip on re-run (table: tests/research)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hbnn.cli import main
from hbnn.experiments.fig2a import approximation_error, expand_fig2a
from hbnn.experiments.paper import FIG2A_HETERO, FIG2A_HOMOGENEOUS
from hbnn.experiments.results import read_results
from hbnn.experiments.spec import load_experiment

REPO = Path(__file__).resolve().parents[2]
FIG2A = str(REPO / "configs" / "experiments" / "fig2a.yaml")
#: 2e5 entries: the score's sampling noise is ~1e-3, far inside the paper's 0.02 tolerance.
N = 200_000
CELLS = ["homogeneous-1", "homogeneous-2", "middle_out-1.4", "middle_out-1.8", "bottom_up-1.5",
         "top_down-1.3", "random-1.9"]
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def fig2a_lines(tmp_path_factory):
    results = tmp_path_factory.mktemp("fig2a") / "fig2a.jsonl"
    args = ["sweep", FIG2A, "--results", str(results), "--set", f"n={N}"]
    for cell in CELLS:
        args += ["--only", cell]
    assert main(args) == 0
    return results, read_results(results)


def test_experiment_has_every_cell():
    runs = expand_fig2a(load_experiment(FIG2A))
    assert len(runs) == 4 + 4 * 9
    assert runs[0].config["n"] == 1_000_000 and runs[0].name == "fig2a/homogeneous-1/seed0"


def test_cells_match_the_paper(fig2a_lines):
    _, lines = fig2a_lines
    assert sorted(line["point"] for line in lines) == sorted(CELLS)
    for line in lines:
        assert line["paper"] is not None
        assert abs(line["error"] - line["paper"]) <= TOLERANCE, line["point"]
    by_point = {line["point"]: line for line in lines}
    assert by_point["middle_out-1.4"]["paper"] == FIG2A_HETERO["middle_out"][3]
    assert by_point["homogeneous-2"]["paper"] == FIG2A_HOMOGENEOUS[2]
    assert by_point["middle_out-1.4"]["mix"] == "70/20/10"


def test_line_schema(fig2a_lines):
    _, lines = fig2a_lines
    line = lines[0]
    for key in ("schema", "kind", "experiment", "figure", "point", "run", "seed", "config", "config_sha",
                "error", "paper", "avg_bits", "heuristic", "n", "hardware", "hbnn_version", "date", "wall_s"):
        assert key in line, key
    assert line["kind"] == "fig2a" and line["config"]["n"] == N
    assert {"cpu", "cores", "threads", "device", "torch"} <= set(line["hardware"])


def test_rerun_skips(fig2a_lines, capsys):
    results, lines = fig2a_lines
    assert main(["sweep", FIG2A, "--results", str(results), "--set", f"n={N}", "--only", "middle_out-1.4"]) == 0
    assert "1 done" in capsys.readouterr().out
    assert len(read_results(results)) == len(lines)  # nothing appended


def test_approximation_error_direct():
    import torch

    x = torch.randn(50_000, generator=torch.Generator().manual_seed(1))
    assert approximation_error(x, 1) == pytest.approx(0.60, abs=TOLERANCE)
    assert approximation_error(x, "70/20/10", "middle_out") < approximation_error(x, "70/20/10", "random")
