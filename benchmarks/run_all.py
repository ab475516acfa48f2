"""Run every benchmark with modest settings; one JSON file each, then a summary.

Run: ``python -m benchmarks.run_all [--only NAME ...] [--quick] [--out-dir results/bench] [--dry-run]``
(``make bench``). Benchmarks (:data:`BENCHMARKS`):

- ``core``: Algorithm 1 by thresholds vs a full sort, quantizer cost (:mod:`benchmarks.bench_core`);
- ``train``: training-step time of HBNN vs float (:mod:`benchmarks.bench_train`);
- ``kernels``: bit-serial GEMM/conv kernels vs fp32 (:mod:`benchmarks.bench_kernels`);
- ``infer``: the whole packed ``cifar_fc4`` vs fp32 (:mod:`benchmarks.bench_infer`);
- ``infer_resnet20``: the whole packed ResNet-20 (residual DAG) vs fp32 (:mod:`benchmarks.bench_infer`
  ``--model resnet20``);
- ``compile``: ``torch.compile`` of the training model: graph breaks, recompiles, compiled vs eager
  step time (:mod:`benchmarks.bench_train` ``--compile``).

Each runs in its own process (``python -m benchmarks.bench_<name> ... --out FILE``), so
thread settings and kernel caches of one never affect the next, and writes
``<out-dir>/<name>.json`` atomically: a benchmark that fails leaves its previous file as
it was. ``<out-dir>/summary.json`` records each run's command, status, wall time and
headline. ``--quick`` runs the smoke settings (seconds, not minutes; the numbers mean
little); ``--dry-run`` prints the commands and runs nothing. Exit code 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]


def _core(r: dict) -> str:
    big = r["bitmap_1.4_middle_out"][-1]
    ratios = [q["ratio"] for q in r["quantizer_fwd_bwd"]]
    return (f"Algorithm 1 thresholds {big['speedup']:.1f}x faster than a sort at n={big['n']:,}; "
            f"quantizer fwd+bwd {min(ratios):.1f}-{max(ratios):.1f}x a plain op")


def _train(r: dict) -> str:
    ratios = ", ".join(f"{k.replace('_vs_float', '')} {v:.2f}x" for k, v in r["ratios"].items())
    ok = all(r["meets_targets"].values())
    return f"step time vs float: {ratios}; targets {'met' if ok else 'NOT met'}"


def _kernels(r: dict) -> str:
    ratios = [row["ratio_vs_fp32"] for row in r["results"]]
    return f"{len(ratios)} cases, kernel speedup vs fp32 {min(ratios):.2f}-{max(ratios):.2f}x"


def _infer(r: dict) -> str:
    cases = ", ".join(f"{c['config']} {c['speedup_vs_fp32']:.2f}x" for c in r["cases"])
    mismatches = sum(c["mismatches"] for c in r["cases"])
    return f"packed {r.get('model', 'cifar_fc4')} vs fp32: {cases}; {mismatches} prediction mismatches"


def _compile(r: dict) -> str:
    return f"torch.compile targets {'all met' if r.get('all_targets_met') else 'NOT all met'}"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script and how :func:`run` calls it.

    Attributes:
        name: short name (``--only``; the output file is ``<name>.json``).
        module: the ``python -m`` module; its CLI takes ``--out FILE``.
        args: the modest settings of a full run.
        quick_args: smoke settings (``--quick``).
        headline: one line from the result JSON for the summary.
    """

    name: str
    module: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    headline: Callable[[dict], str]


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("core", "benchmarks.bench_core", ("--sizes", "1e5,1e6,1e7,6e7", "--reps", "3"),
              ("--sizes", "1e4,1e5", "--reps", "1"), _core),
    Benchmark("train", "benchmarks.bench_train", ("--rounds", "5", "--threads", "1"),
              ("--batch-size", "4", "--rounds", "1", "--steps", "1", "--warmup", "1", "--image-size", "16",
               "--threads", "1"), _train),
    Benchmark("kernels", "benchmarks.bench_kernels", ("--reps", "3"),
              ("--quick", "--reps", "1", "--threads", "1"), _kernels),
    Benchmark("infer", "benchmarks.bench_infer", ("--reps", "11"),
              ("--quick", "--cases", "W1A1", "--batch", "4"), _infer),
    Benchmark("infer_resnet20", "benchmarks.bench_infer", ("--model", "resnet20", "--reps", "11", "--no-simulated"),
              ("--model", "resnet20", "--quick", "--cases", "W1A1", "--batch", "4", "--image-size", "8"), _infer),
    Benchmark("compile", "benchmarks.bench_train", ("--compile", "--threads", "1"),
              ("--compile", "--settings", "w1a1", "--batch-size", "4", "--rounds", "1", "--steps", "2",
               "--warmup", "1", "--threads", "1"), _compile),
)


def command(bench: Benchmark, out: Path, *, quick: bool = False, python: str = sys.executable) -> list[str]:
    """The child process's argv for ``bench`` writing its JSON to ``out``."""
    return [python, "-m", bench.module, *(bench.quick_args if quick else bench.args), "--out", str(out)]


def _headline(bench: Benchmark, out: Path) -> str:
    try:
        return bench.headline(json.loads(out.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:  # a changed schema is not fatal
        return f"(no headline: {type(exc).__name__}: {exc})"


def run_one(bench: Benchmark, out_dir: Path, *, quick: bool = False, timeout: float | None = None) -> dict[str, Any]:
    """Run one benchmark in a child process; ``{"name", "status", "wall_s", "out", "command", ...}``."""
    out = out_dir / f"{bench.name}.json"
    argv = command(bench, out, quick=quick)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, err = None, f"timed out after {exc.timeout:g} s"
    row: dict[str, Any] = {"name": bench.name, "command": argv, "wall_s": round(time.perf_counter() - t0, 2),
                           "out": str(out), "quick": quick}
    if code == 0:
        row.update(status="ok", headline=_headline(bench, out))
    else:
        tail = [line for line in (err or "").strip().splitlines() if line.strip()][-1:] or [f"exit code {code}"]
        row.update(status="failed", returncode=code, error=tail[0])
    return row


def run(benchmarks: Sequence[Benchmark], out_dir: str | os.PathLike, *, quick: bool = False,
        timeout: float | None = None, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run ``benchmarks`` one after the other, echoing a line each, and write ``summary.json``."""
    from hbnn.io import atomic_write_json

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for bench in benchmarks:
        echo(f"[{bench.name}] running {bench.module}{' (quick)' if quick else ''} ...")
        row = run_one(bench, out_dir, quick=quick, timeout=timeout)
        rows.append(row)
        detail = row["headline"] if row["status"] == "ok" else f"FAILED: {row['error']}"
        echo(f"[{bench.name}] {row['status']} in {row['wall_s']:.1f} s -> {row['out']}\n    {detail}")
    atomic_write_json(out_dir / "summary.json", {"benchmarks": _merge_summary(out_dir / "summary.json", rows)})
    return rows


def _merge_summary(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` replacing the same-named rows of an existing summary (``--only`` keeps the others)."""
    try:
        old = json.loads(path.read_text()).get("benchmarks", [])
    except (OSError, ValueError, AttributeError):
        old = []
    fresh = {r["name"]: r for r in rows}
    kept = [r for r in old if isinstance(r, dict) and r.get("name") not in fresh]
    order = [b.name for b in BENCHMARKS]
    return sorted(kept + rows, key=lambda r: order.index(r["name"]) if r.get("name") in order else len(order))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns 0 when every selected benchmark succeeded, else 1."""
    names = [b.name for b in BENCHMARKS]
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"subset of: {', '.join(names)}")
    p.add_argument("--quick", action="store_true", help="smoke settings (seconds; numbers mean little)")
    p.add_argument("--out-dir", default="results/bench", help="folder for the JSON files (default results/bench)")
    p.add_argument("--timeout", type=float, help="seconds per benchmark before it counts as failed")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    selected = [b for b in BENCHMARKS if args.only is None or b.name in args.only]
    out_dir = Path(args.out_dir).resolve()
    if args.dry_run:
        for bench in selected:
            print(" ".join(command(bench, out_dir / f"{bench.name}.json", quick=args.quick)))
        return 0
    rows = run(selected, out_dir, quick=args.quick, timeout=args.timeout)
    failed = [r["name"] for r in rows if r["status"] != "ok"]
    print(f"{len(rows) - len(failed)} of {len(rows)} benchmarks ok" + (f"; failed: {', '.join(failed)}" if failed else "")
          + f"; results in {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
