"""Whole-net inference benchmark: packed ``cifar_fc4`` (W1A1, W2A2, W1.4A1.4) vs torch fp32 eval.

Run: ``python -m benchmarks.bench_infer [--batch 64] [--reps 9] [--threads N] [--quick] [--out FILE]``
(the same as ``hbnn bench infer``). Prints one JSON object; every ratio is measured side
by side in this process on the same input batch (medians of ``reps``, interleaved).
The implementation lives in :mod:`hbnn.export.bench`.
"""

from __future__ import annotations

import argparse
import json

from hbnn.export.bench import CASES, bench_infer
from hbnn.io import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run :func:`hbnn.export.bench.bench_infer`, print (and save) the JSON."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_infer", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--threads", type=int)
    p.add_argument("--cases", nargs="+", choices=list(CASES))
    p.add_argument("--quick", action="store_true", help="3 reps, batch 16")
    p.add_argument("--out", help="also write the JSON to this file")
    args = p.parse_args(argv)
    result = bench_infer(batch=args.batch, reps=args.reps, threads=args.threads, quick=args.quick, cases=args.cases)
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
