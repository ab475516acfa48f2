"""``python -m research plot structure``: accuracy lines + bench JSON -> table, verdicts by the rule, figure."""

from __future__ import annotations

import json
import math

import pytest

from research.cli import main
from research.report import render_doc
from research.structure import load_structure, structure_markdown, structure_rows

W1A1, W2A2 = {"weight": 1, "act": 1, "label": "W1A1"}, {"weight": 2, "act": 2, "label": "W2A2"}
W1, W2 = {"weight": 1, "label": "W1"}, {"weight": 2, "label": "W2"}
BLOCK = {"weight": 1.4, "act": 1.4, "structure": "block64", "act_structure": "group64", "label": "block64"}
CHANNEL = {"weight": 1.4, "act": 1.4, "structure": "channel", "act_structure": "pixel", "label": "channel"}
ENTRY = {"weight": 1.4, "act": 1.4, "label": "entry"}
W_CHANNEL = {"weight": 1.4, "structure": "channel", "allocate": "error", "label": "w channel"}

#: top-1 fractions per seed. W1A1 80, W2A2 90 (gap 10 points); block64 ~89 (recovery 90%),
#: channel ~80.5 (5%), entry ~87 with a wide spread; weights only: W1 85, W2 89, channel 88.5.
POINTS = {
    "fp": ({"label": "FP"}, [0.92, 0.921, 0.919]),
    "w1a1": (W1A1, [0.80, 0.801, 0.799]),
    "w2a2": (W2A2, [0.90, 0.901, 0.899]),
    "block": (BLOCK, [0.89, 0.891, 0.889]),
    "channel": (CHANNEL, [0.805, 0.806, 0.804]),
    "entry": (ENTRY, [0.87, 0.82, 0.92]),
    "w1": (W1, [0.85, 0.851, 0.849]),
    "w2": (W2, [0.89, 0.891, 0.889]),
    "w_channel": (W_CHANNEL, [0.885, 0.886, 0.884]),
}
#: point -> (median ms, min ms, bits per binarized weight)
BENCH = {"fp": (10.0, 9.0, None), "w1a1": (3.0, 2.5, 1.0), "w2a2": (6.0, 5.0, 2.0), "block": (4.0, 3.5, 1.43),
         "channel": (3.5, 3.0, 1.40), "entry": (12.0, 11.0, 2.70), "w1": (9.0, 8.0, 1.0), "w2": (9.5, 8.5, 2.0),
         "w_channel": (9.2, 8.4, 1.40)}


def _bench(points=BENCH, **extra) -> dict:
    rows = [{"point": p, "packed_ms": ms, "packed_min_ms": lo, "bits_per_binarized_weight": bits,
             "time_vs_fp32": ms / 10.0, "time_vs_ref": ms / 6.0} for p, (ms, lo, bits) in points.items()]
    return {"benchmark": "bench_structure", "cpu_model": "Test CPU", "threads": 2, "kernel_variant": "avx2",
            "input": [64, 1, 28, 28], "input_kind": "random", "reps": 15, "quick": False, "fp32_ms": 10.0,
            "fp32_channels_last_ms": 4.0, "weights": ["trained"], "points": rows, **extra}


@pytest.fixture
def files(tmp_path, make_lines):
    results = tmp_path / "structure.jsonl"
    results.write_text("".join(json.dumps(line) + "\n" for line in make_lines("structure", POINTS)))
    bench = tmp_path / "bench" / "structure.json"
    bench.parent.mkdir()
    bench.write_text(json.dumps(_bench()))
    return results, bench


def _rows(results, bench):
    return {r.stats.point: r for r in structure_rows(*load_structure(results, bench))}


def test_roles_recovery_and_verdicts_follow_the_rule(files):
    rows = _rows(*files)
    assert {p: rows[p].role for p in ("fp", "w1a1", "w2a2", "w1", "w2", "block")} == {
        "fp": "fp", "w1a1": "w1a1", "w2a2": "w2a2", "w1": "w1", "w2": "w2", "block": "point"}
    assert all(rows[p].verdict == "" for p in ("fp", "w1a1", "w2a2", "w1", "w2"))
    block = rows["block"]
    assert block.recovery == pytest.approx(0.9)  # (89 - 80) / (90 - 80)
    assert (block.kept, block.faster, block.smaller, block.verdict) == ("held", True, True, "yes")
    channel = rows["channel"]  # fast and small, but recovers 5%
    assert channel.recovery == pytest.approx(0.05) and channel.kept == "did not hold" and channel.verdict == "no"
    entry = rows["entry"]  # mean 87 (70% exactly) with a 5-point spread: inconclusive; slower and bigger: no
    assert entry.recovery == pytest.approx(0.7) and entry.kept == "inconclusive (seed spread)"
    assert (entry.faster, entry.smaller, entry.verdict) == (False, False, "no")
    w_channel = rows["w_channel"]  # weights only: against W1 and W2 (recovery (88.5 - 85) / 4)
    assert w_channel.recovery == pytest.approx(0.875) and w_channel.kept == "held"
    assert (w_channel.faster, w_channel.smaller, w_channel.verdict) == (True, True, "yes")


def test_the_rule_uses_two_standard_errors(tmp_path, make_lines, files):
    """v = m - 0.3 m_1 - 0.7 m_2 with se^2 = se_P^2 + 0.09 se_1^2 + 0.49 se_2^2: just above 2 se holds,
    just below does not."""
    results, bench = files
    se_ref = 0.1 / math.sqrt(3)  # every reference: std 0.1 points over 3 seeds
    for margin, kept in ((2.05, "held"), (1.95, "inconclusive (seed spread)")):
        se = math.sqrt(se_ref ** 2 * (1 + 0.09 + 0.49))  # the point's own spread as the references'
        mean = 0.3 * 80 + 0.7 * 90 + margin * se
        points = {**POINTS, "block": (BLOCK, [(mean + d) / 100 for d in (0.0, 0.1, -0.1)])}
        results.write_text("".join(json.dumps(line) + "\n" for line in make_lines("structure", points)))
        assert _rows(results, bench)["block"].kept == kept, margin


def test_slower_or_bigger_than_w2a2_is_no(files):
    results, bench = files
    for change in ({"block": (6.5, 3.5, 1.43)}, {"block": (4.0, 5.5, 1.43)}, {"block": (4.0, 3.5, 2.1)}):
        bench.write_text(json.dumps(_bench({**BENCH, **change})))
        row = _rows(results, bench)["block"]
        assert row.kept == "held" and row.verdict == "no", change


def test_missing_reference_or_bench_row_is_not_run(files):
    results, bench = files
    bench.write_text(json.dumps(_bench({k: v for k, v in BENCH.items() if k not in ("w2", "entry")})))
    rows = _rows(results, bench)
    assert rows["w_channel"].verdict == "not run" and rows["w_channel"].kept == "held"
    assert rows["entry"].bench is None and rows["entry"].verdict == "not run"


def test_markdown_table_and_verdict(files):
    text = structure_markdown(*files)
    lines = text.splitlines()
    assert lines[0].startswith("| point | maps (weights + acts) | top-1 %")
    block = next(line for line in lines if line.startswith("| block64 "))
    assert "| block64 + group64 | 89.00 ± 0.10 (3) | 90% | held | 4.00 |" in block and "| **yes** |" in block
    assert "| yes / yes |" in block and "| 1.430 |" in block
    assert "| w channel | channel error | " in text
    assert "| FP | float | 92.00 ± 0.10 (3) |  |  | 10.00 (PyTorch fp32) | 1.00 |" in text  # FP at its fp32 time
    assert "**Verdict:** block64, w channel keep at least 70%" in text
    assert "Rule: recovery = (top1 - top1_W1A1)" in text and "Test CPU, 2 threads, avx2 kernels" in text


def test_cli_writes_the_figure_and_prints_markdown(files, tmp_path, capsys):
    results, bench = files
    assert main(["plot", "structure", "--results", str(results), "--bench", str(bench), "--out", str(tmp_path)]) == 0
    png = tmp_path / "structure.png"
    assert capsys.readouterr().out.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", "structure", "--results-dir", str(results.parent), "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == structure_markdown(results, bench)


@pytest.mark.parametrize("missing, message", [
    ("results", "results file .*structure.jsonl not found; run 'hbnn sweep structure' first"),
    ("bench", "bench file .*structure.json not found; run 'python -m benchmarks.bench_structure' first"),
])
def test_missing_files_are_one_line_errors(files, tmp_path, capsys, missing, message):
    results, bench = files
    (results if missing == "results" else bench).unlink()
    assert main(["plot", "structure", "--results-dir", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert __import__("re").search(message, err)


def test_report_region_is_filled_from_the_results_folder(files):
    results, bench = files
    doc = "# x\n<!-- hbnn plot structure -->\nOLD-BODY\n<!-- /hbnn plot -->\n"
    out = render_doc(doc, results.parent)
    assert structure_markdown(results, bench) in out and "OLD-BODY" not in out
    bench.unlink()  # missing files: the region stays as it was
    assert render_doc(doc, results.parent) == doc
