"""The claims at several training lengths (research.scales), from synthetic result lines."""

from __future__ import annotations

import json

import pytest

from research.scales import gaps_by_length, plot_training_length, verdicts_by_scale_markdown

W2 = {"weight": 2}
W14 = {"weight": 1.4, "heuristic": "middle_out"}
A2 = {"weight": 2, "act": 2}
A14 = {"weight": 1.4, "act": 1.4, "heuristic": "middle_out"}


def _write(folder, name, lines, epochs):
    for line in lines:
        line["config"] = {"train": {"epochs": epochs}}
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def three_scales(tmp_path, make_lines):
    """2 epochs: 1.4 beats 2 in (ii), loses in (v); 6 epochs: only (ii); 15 epochs: both small gaps."""
    _write(tmp_path, "fig2b", make_lines("fig2b", {"w2": (W2, [0.880, 0.882, 0.881]),
                                                   "w1.4_mo": (W14, [0.883, 0.884, 0.885])}), 2)
    _write(tmp_path, "table1", make_lines("table1", {"w2a2": (A2, [0.870, 0.872, 0.871]),
                                                     "w1.4a1.4": (A14, [0.860, 0.862, 0.861])}), 2)
    _write(tmp_path, "mid_fig2b", make_lines("mid_fig2b", {"w2": (W2, [0.890, 0.891, 0.892]),
                                                           "w1.4_mo": (W14, [0.889, 0.890, 0.891])}), 6)
    _write(tmp_path, "long_fig2b", make_lines("long_fig2b", {"w2": (W2, [0.900, 0.901, 0.902]),
                                                             "w1.4_mo": (W14, [0.900, 0.901, 0.902])}), 15)
    _write(tmp_path, "long_table1", make_lines("long_table1", {"w2a2": (A2, [0.890, 0.891, 0.892]),
                                                               "w1.4a1.4": (A14, [0.891, 0.892, 0.893])}), 15)
    return tmp_path


def test_gaps_by_length_reads_epochs_from_the_lines(three_scales):
    gaps = gaps_by_length(three_scales)
    assert [(e, round(v, 6)) for e, v, _, _ in gaps["ii"]] == [(2, -0.3), (6, 0.1), (15, 0.0)]
    assert [(e, round(v, 6)) for e, v, _, _ in gaps["v"]] == [(2, -1.0), (15, 0.1)]
    assert all(se is not None and se > 0 for points in gaps.values() for _, _, se, _ in points)


def test_side_by_side_verdicts_have_one_column_per_scale(three_scales):
    text = verdicts_by_scale_markdown(three_scales)
    head, rule, *rows = text.split("\n\n")[0].splitlines()
    assert head == "| claim | 2 epochs | converged (15 epochs) |"
    row_ii = next(r for r in rows if r.startswith("| (ii)"))
    row_v = next(r for r in rows if r.startswith("| (v)"))
    assert row_ii.count("**held**") == 2
    assert "**did not hold**" in row_v.split(" | ")[1] and "2/2" in row_v
    assert all(r.count(" | ") == 2 for r in rows)  # no stray cell separators from the details


def test_training_length_figure_is_written(three_scales):
    path = plot_training_length(three_scales, three_scales / "out" / "training_length.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_length_without_results_is_one_line_error(tmp_path):
    from hbnn.errors import ConfigError

    with pytest.raises(ConfigError, match="no results for claims"):
        plot_training_length(tmp_path, tmp_path / "x.png")


def test_gaps_table_has_one_row_per_length_and_marks_missing_points(three_scales):
    from research.scales import gaps_by_length_markdown

    rows = gaps_by_length_markdown(three_scales).splitlines()
    assert rows[0].startswith("| epochs | (ii) ") and len(rows) == 5
    assert rows[2].startswith("| 2 | -0.30 ± ") and "**held**" in rows[2] and "**did not hold**" in rows[2]
    assert rows[3].startswith("| 6 | +0.10 ± ") and rows[3].endswith("| not run |")
    assert rows[4].startswith("| 15 | +0.00 ± ")
    assert gaps_by_length_markdown(three_scales / "nothing") == "No result files found."


def test_report_regions_fill_the_scale_tables(three_scales):
    from research.report import render_doc

    doc = "<!-- hbnn plot training_length -->\nSTALE\n<!-- /hbnn plot -->\n<!-- hbnn plot verdicts_by_scale -->\n"
    out = render_doc(doc, three_scales)
    assert "STALE" not in out and "| 15 | +0.00 ± " in out
    assert "| claim | 2 epochs | converged (15 epochs) |" in out
    assert out.count("<!-- /hbnn plot -->") == 2
    curves_region = "<!-- hbnn plot curves -->\nkept\n<!-- /hbnn plot -->\n"
    assert render_doc(curves_region, three_scales) == curves_region  # no curves file: left as it is
