#!/usr/bin/env python3
"""Collect the per-epoch test curves of finished sweep runs into one committed JSON-lines file.

Run folders (runs/sweeps/...) are not committed; their ``metrics.csv`` holds one row per
evaluated epoch. This script writes, for every run recorded in the given results files,
one line ``{"run", "config_sha", "epoch": [...], "test_top1": [...], "train_top1": [...],
"lr": [...]}`` so that the curves (e.g. the converged scale flattening) stay with the results.

    python scripts/collect_curves.py --runs-dir runs/sweeps --out results/curves_long.jsonl \\
        results/long_fig2b.jsonl results/long_table1.jsonl results/long_mix.jsonl

Lines already in ``--out`` are kept (a run is collected once); runs whose folder is gone are
skipped and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from hbnn.experiments.results import read_results
from hbnn.io import atomic_write_text

FIELDS = ("epoch", "test_top1", "train_top1", "lr")


def curve(run_dir: Path) -> dict | None:
    """The evaluated epochs of ``run_dir/metrics.csv`` (None when the file is missing)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    rows = [r for r in csv.DictReader(path.open()) if r.get("test_top1")]
    out = {k: [float(r[k]) for r in rows] for k in FIELDS}
    out["epoch"] = [int(e) for e in out["epoch"]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results files whose runs to collect")
    ap.add_argument("--runs-dir", default="runs/sweeps")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    out = Path(args.out)
    kept = read_results(out) if out.exists() else []
    have = {(line["run"], line["config_sha"]) for line in kept}
    missing = 0
    for results in args.results:
        for line in read_results(results):
            key = (line["run"], line["config_sha"])
            if key in have:
                continue
            run_dir = Path(args.runs_dir) / line["experiment"] / line["point"] / f"seed{line['seed']}-{line['config_sha'][:8]}"
            c = curve(run_dir)
            if c is None:
                missing += 1
                continue
            kept.append({"run": line["run"], "config_sha": line["config_sha"], **c})
            have.add(key)
    atomic_write_text(out, "".join(json.dumps(line, sort_keys=True) + "\n" for line in kept))
    print(f"{out}: {len(kept)} curves ({missing} runs without a folder skipped)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
