"""Core benchmark: Algorithm 1 by thresholds vs by a full sort; quantizer cost vs a plain op.

Run: ``python -m benchmarks.bench_core [--sizes 1e5,1e6,1e7,6e7] [--reps 3] [--out FILE]``.
Prints one JSON object; all ratios are measured side by side in the same process.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from benchmarks._emit import emit

from hbnn.quant import BitMix, make_bitmap
from hbnn.quant.bitmap import heuristic_key
from hbnn.quant.bitmap import sort_bitmap as reference_sort_bitmap
from hbnn.quant.modules import ActQuantizer, WeightQuantizer


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sort_bitmap(x: torch.Tensor, mix: BitMix, heuristic: str) -> torch.Tensor:
    """Algorithm 1 as written: argsort the key, cut the ranking into slices, scatter."""
    return reference_sort_bitmap(heuristic_key(x, heuristic), mix)


def bench_bitmap(sizes: list[int], reps: int) -> list[dict]:
    mix = BitMix.from_average(1.4)
    rows = []
    for n in sizes:
        x = torch.randn(n)
        fast = _median_time(lambda: make_bitmap(x, mix), reps)
        sort_reps = 1 if n > 10_000_000 else reps
        slow = _median_time(lambda: sort_bitmap(x, mix, "middle_out"), sort_reps)
        same = bool(torch.equal(make_bitmap(x, mix), sort_bitmap(x, mix, "middle_out")))
        rows.append({"n": n, "threshold_s": fast, "sort_s": slow, "speedup": slow / fast, "identical": same})
    return rows


def bench_quantizer(reps: int) -> list[dict]:
    """Forward+backward of a quantizer vs a plain elementwise op (``x * 2``) on the same tensor."""
    cases = [
        ("weight 1.4-bit, 3x3x256x256", lambda: WeightQuantizer(1.4), (256, 256, 3, 3)),
        ("weight 2-bit, 3x3x256x256", lambda: WeightQuantizer(2), (256, 256, 3, 3)),
        ("act 1-bit, 128x64x28x28", lambda: ActQuantizer(1), (128, 64, 28, 28)),
        ("act 2-bit, 128x64x28x28", lambda: ActQuantizer(2), (128, 64, 28, 28)),
        ("act 1.4-bit, 128x64x28x28", lambda: ActQuantizer(1.4), (128, 64, 28, 28)),
    ]
    rows = []
    for name, make, shape in cases:
        q = make().train()
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)

        def quantized():
            q(x).backward(g)

        def plain():
            (x * 2).backward(g)

        t_q, t_p = _median_time(quantized, reps), _median_time(plain, reps)
        rows.append({"case": name, "numel": x.numel(), "quantizer_s": t_q, "plain_op_s": t_p, "ratio": t_q / t_p})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1e5,1e6,1e7,6e7")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = {
        "benchmark": "core",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "bitmap_1.4_middle_out": bench_bitmap([int(float(s)) for s in args.sizes.split(",")], args.reps),
        "quantizer_fwd_bwd": bench_quantizer(args.reps),
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
