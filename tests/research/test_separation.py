"""The library never needs the research harness, and the wheel ships neither it nor the benchmarks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_hbnn_and_its_cli_never_import_research_or_benchmarks():
    code = ("import sys, hbnn, hbnn.cli, hbnn.experiments; hbnn.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('research', 'benchmarks')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_hbnn_cli_has_no_research_commands():
    from hbnn.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert not {"showcase", "plot", "bench"} & set(sub.choices)


def test_wheel_packages_are_hbnn_only():
    import tomllib

    from setuptools import find_packages

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["packages"]["find"]["where"] == ["src"]
    packages = find_packages(where=str(REPO / "src"))
    assert "hbnn" in packages and "hbnn.experiments" in packages
    assert all(p == "hbnn" or p.startswith("hbnn.") for p in packages), packages


def test_research_cli_runs_as_a_module(tmp_path):
    done = subprocess.run([sys.executable, "-m", "research", "plot", "fig2b", "--results", str(tmp_path / "x.jsonl")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("python -m research: error: results file")
