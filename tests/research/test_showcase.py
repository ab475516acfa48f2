"""The showcase's table and plot from rows (training itself is covered by tests/train)."""

import json

from research.showcase import SHOWCASE_RUNS, _plot, format_table


def _rows():
    rows = []
    for (name, _, label), top1, w, a, kib in zip(
        SHOWCASE_RUNS, (88.4, 86.7, 86.5, 83.4), (32.0, 2.0, 1.4, 1.0), (32.0, 2.0, 1.4, 1.0), (114.0, 8.0, 13.0, 4.5)
    ):
        rows.append(dict(run=name, label=label, top1=top1, weight_bits=w, act_bits=a, stored_kib=kib))
    return rows


def test_format_table_shows_percent_bits_and_size():
    table = format_table(_rows()).splitlines()
    assert table[2] == "| FP / FP | 88.40 | 32 (float) | 32 (float) | 114.0 |"
    assert table[4] == "| 1.4 / 1.4 HBNN (MO) | 86.50 | 1.400 | 1.40 | 13.0 |"
    assert len(table) == 2 + len(SHOWCASE_RUNS)


def test_plot_writes_png(tmp_path):
    out = tmp_path / "showcase.png"
    _plot(_rows(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(_rows())  # rows are JSON-safe (showcase.json)
