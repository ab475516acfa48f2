"""The README's "Use it on your own model" block runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _own_model_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Use it on your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section has exactly one python block"
    return blocks[0]


def test_own_model_snippet_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_own_model_block(), str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "['3', '7']" in out and "CalibrationReport(batches=4" in out
    assert (tmp_path / "my_net.hbnn").is_file()
