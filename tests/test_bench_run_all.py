"""``python -m benchmarks.run_all``: its plumbing, with stand-in benchmarks (the real ones take minutes)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from benchmarks import run_all
from benchmarks.run_all import BENCHMARKS, Benchmark

REPO = Path(__file__).resolve().parents[1]

FAKE = textwrap.dedent('''
    import argparse, json, sys
    p = argparse.ArgumentParser()
    p.add_argument("--value", type=float)
    p.add_argument("--fail", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    if a.fail:
        sys.exit("fake failure: disk on fire")
    with open(a.out, "w") as fh:
        json.dump({"value": a.value}, fh)
    print("lots of JSON nobody asked for")
''')


@pytest.fixture
def fakes(tmp_path, monkeypatch) -> list[Benchmark]:
    """Two stand-ins on PYTHONPATH: ``ok`` writes ``{"value": v}``, ``bad`` exits with an error."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "fake_bench.py").write_text(FAKE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mods"))
    return [Benchmark("ok", "fake_bench", ("--value", "1"), ("--value", "2"), lambda r: f"value {r['value']}"),
            Benchmark("bad", "fake_bench", ("--fail",), ("--fail",), lambda r: "never")]


def test_runs_each_writes_json_and_a_summary(fakes, tmp_path):
    out_dir = tmp_path / "bench"
    out_dir.mkdir()
    (out_dir / "bad.json").write_text('{"previous": true}')
    lines: list[str] = []
    rows = run_all.run(fakes, out_dir, quick=True, echo=lines.append)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert json.loads((out_dir / "ok.json").read_text()) == {"value": 2.0}  # quick settings
    assert rows[0]["headline"] == "value 2.0" and rows[0]["command"][-2:] == ["--out", str(out_dir / "ok.json")]
    assert rows[1]["error"] == "fake failure: disk on fire" and rows[1]["returncode"] == 1
    assert json.loads((out_dir / "bad.json").read_text()) == {"previous": True}  # a failure keeps the old file
    assert json.loads((out_dir / "summary.json").read_text()) == {"benchmarks": rows}
    text = "\n".join(lines)
    assert "[ok] ok in" in text and "value 2.0" in text and "FAILED: fake failure: disk on fire" in text
    assert "nobody asked" not in text
    assert sorted(p.name for p in out_dir.iterdir()) == ["bad.json", "ok.json", "summary.json"]


def test_main_selects_and_reports_failures(fakes, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_all, "BENCHMARKS", tuple(fakes))
    assert run_all.main(["--only", "ok", "--out-dir", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "ok.json").read_text()) == {"value": 1.0}  # full settings
    assert capsys.readouterr().out.endswith(f"1 of 1 benchmarks ok; results in {tmp_path / 'a'}\n")
    assert run_all.main(["--out-dir", str(tmp_path / "b")]) == 1
    assert "1 of 2 benchmarks ok; failed: bad" in capsys.readouterr().out


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, capsys):
    out_dir = tmp_path / "never"
    assert run_all.main(["--dry-run", "--out-dir", str(out_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" -m ")[1].split()[0] for line in lines] == [f"benchmarks.bench_{n}" for n in
                                                                     ("core", "train", "kernels", "infer", "infer",
                                                                      "train")]
    assert all(line.endswith(f"--out {out_dir / (b.name + '.json')}") for line, b in zip(lines, BENCHMARKS))
    assert run_all.main(["--dry-run", "--quick", "--only", "infer", "--out-dir", str(out_dir)]) == 0
    assert "benchmarks.bench_infer --quick --cases W1A1 --batch 4 --out" in capsys.readouterr().out
    assert not out_dir.exists()
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope"])


@pytest.mark.parametrize("bench", BENCHMARKS, ids=lambda b: b.name)
def test_every_flag_is_one_the_benchmark_accepts(bench):
    source = (REPO / Path(*bench.module.split("."))).with_suffix(".py").read_text()
    for flag in {a for a in (*bench.args, *bench.quick_args, "--out") if a.startswith("--")}:
        assert f'"{flag}"' in source, f"{bench.module} has no {flag}"


def test_only_keeps_the_other_rows_of_an_existing_summary(fakes, tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "BENCHMARKS", tuple(fakes))
    out = tmp_path / "c"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"benchmarks": [{"name": "bad", "status": "old"},
                                                                 {"name": "ok", "status": "stale"}]}))
    assert run_all.main(["--only", "ok", "--out-dir", str(out)]) == 0
    rows = json.loads((out / "summary.json").read_text())["benchmarks"]
    assert [(r["name"], r["status"]) for r in rows] == [("ok", "ok"), ("bad", "old")]  # registry order
