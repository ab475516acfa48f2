"""python -m research plot report: result-table regions of a markdown file regenerate from result files."""

import json

from research.cli import main
from research.report import render_doc


def _write_results(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def test_render_doc_fills_and_refills_regions(tmp_path, monkeypatch):
    from research import report

    calls = []

    def fake(name, results=None, results_dir="results", prefix=""):
        calls.append(name)
        return f"table of {name} #{len(calls)}"

    monkeypatch.setattr(report, "experiment_markdown", fake)
    doc = "intro\n<!-- hbnn plot fig2b --markdown -->\n\ntext\n<!-- hbnn plot verdicts -->\nend\n"
    once = render_doc(doc)
    assert once == (
        "intro\n<!-- hbnn plot fig2b --markdown -->\ntable of fig2b #1\n<!-- /hbnn plot -->\n\ntext\n"
        "<!-- hbnn plot verdicts -->\ntable of verdicts #2\n<!-- /hbnn plot -->\nend\n"
    )
    twice = render_doc(once)
    assert "table of fig2b #3" in twice and "#1" not in twice and twice.count("<!-- /hbnn plot -->") == 2


def test_missing_results_leave_region_and_cli_updates_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- hbnn plot nothing --markdown -->\nold\n<!-- /hbnn plot -->\n")
    assert main(["plot", "report", "--doc", str(doc), "--results-dir", str(tmp_path / "results")]) == 0
    assert doc.read_text() == "<!-- hbnn plot nothing --markdown -->\nold\n<!-- /hbnn plot -->\n"
    assert main(["plot", "report", "--doc", str(tmp_path / "missing.md")]) == 2
