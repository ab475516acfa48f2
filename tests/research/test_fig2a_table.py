"""``python -m research plot fig2a --markdown`` on lines written by ``hbnn sweep fig2a``."""

from __future__ import annotations

from hbnn.cli import main as hbnn_main
from hbnn.configs import find_config
from research.cli import main


def test_sweep_then_markdown_table(tmp_path, capsys):
    results = tmp_path / "fig2a.jsonl"
    fig2a = str(find_config("fig2a", "experiments"))
    argv = ["sweep", fig2a, "--results", str(results), "--set", "n=20000", "--only", "middle_out-1.4",
            "--only", "homogeneous-1"]
    assert hbnn_main(argv) == 0
    capsys.readouterr()
    assert main(["plot", "fig2a", "--results", str(results), "--markdown"]) == 0
    table = capsys.readouterr().out
    assert "| middle_out |" in table and "(0.33)" in table and "| homogeneous |" in table
