"""Bit-serial kernels vs PyTorch fp32 on the same shapes (GEMM and 3x3 conv).

Run: ``python -m benchmarks.bench_kernels [--reps 5] [--threads 2] [--quick] [--out FILE]``.
Prints one JSON object.  Each case times ``torch.matmul``/``F.conv2d`` fp32 and the
packed kernel alternately in the same process (medians of ``reps``), so the ratio
``fp32_ms / kernel_ms`` is robust to the machine's load; ``kernel_ms`` excludes packing
of the inputs (an engine keeps weights packed and packs activations in the producing
layer's epilogue); ``with_act_pack_ms`` adds packing the float activations
(``pack_activations``).  Bit mixes: ``W1.4`` = per-parameter 70/20/10 map (3 planes,
planes 2-3 masked), ``A1.4`` likewise for activations.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from benchmarks._emit import emit
import torch.nn.functional as F

from hbnn.kernels import (
    binary_conv2d,
    binary_linear,
    cpu_features,
    pack_activations,
    pack_conv_weight,
    pack_planes,
)

MIXES = {"1": (1.0, 0.0, 0.0), "2": (0.0, 1.0, 0.0), "1.4": (0.7, 0.2, 0.1)}


def _bitmap(shape, mix: str, gen: torch.Generator) -> torch.Tensor:
    """Random per-entry bit map with the mix's fractions (1/2/3 bits)."""
    f1, f2, _ = MIXES[mix]
    u = torch.rand(shape, generator=gen)
    if mix == "2":
        return torch.full(shape, 2, dtype=torch.int8)
    if mix == "1":
        return torch.ones(shape, dtype=torch.int8)
    return (1 + (u >= f1).to(torch.int8) + (u >= f1 + f2).to(torch.int8)).to(torch.int8)


def _weight_planes(shape, mix: str, gen: torch.Generator):
    """Random ``(signs, masks, scales)`` of a weight with the given mix (per-channel scales)."""
    bm = _bitmap(shape, mix, gen)
    n = int(bm.max())
    signs = torch.rand((n, *shape), generator=gen) > 0.5
    masks = torch.stack([bm > i for i in range(n)])
    scales = torch.rand(n, shape[0], generator=gen) + 0.5
    return signs, masks, scales


def _timed_pair(f_ref, f_new, reps: int) -> dict:
    """Alternate the two callables; median and min wall times and median process CPU times (ms)."""
    f_ref(), f_new()
    wall: dict = {"ref": [], "new": []}
    cpu: dict = {"ref": [], "new": []}
    for _ in range(reps):
        for key, fn in (("ref", f_ref), ("new", f_new)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[key].append((time.perf_counter() - t0) * 1e3)
            cpu[key].append((time.process_time() - c0) * 1e3)
    med = statistics.median
    return {
        "ref": med(wall["ref"]), "new": med(wall["new"]), "ref_min": min(wall["ref"]), "new_min": min(wall["new"]),
        "ref_cpu": med(cpu["ref"]), "new_cpu": med(cpu["new"]),
    }


def bench_gemm(b: int, k: int, o: int, wmix: str, amix: str, reps: int, gen) -> dict:
    x = torch.randn(b, k, generator=gen)
    wf = torch.randn(o, k, generator=gen)
    abm = None if amix in ("1", "2") else _bitmap((b, k), amix, gen)
    ascales = torch.tensor([0.8, 0.3, 0.1][: {"1": 1, "2": 2, "1.4": 3}[amix]])
    xp = pack_activations(x, ascales, abm)
    wp = pack_planes(*_weight_planes((o, k), wmix, gen))
    times = _timed_pair(lambda: torch.matmul(x, wf.T), lambda: binary_linear(xp, wp), reps)
    e2e_ms = _timed_pair(lambda: None, lambda: binary_linear(pack_activations(x, ascales, abm), wp), reps)["new"]
    return _row("gemm", f"B{b} K{k} O{o}", wmix, amix, wp, xp, times, e2e_ms, 2.0 * b * k * o)


def bench_conv(b: int, c: int, hw: int, o: int, wmix: str, amix: str, reps: int, gen) -> dict:
    x = torch.randn(b, c, hw, hw, generator=gen)
    wf = torch.randn(o, c, 3, 3, generator=gen)
    abm = None if amix in ("1", "2") else _bitmap(x.shape, amix, gen)
    ascales = torch.tensor([0.8, 0.3, 0.1][: {"1": 1, "2": 2, "1.4": 3}[amix]])
    xp = pack_activations(x, ascales, abm)
    wp = pack_conv_weight(*_weight_planes((o, c, 3, 3), wmix, gen))
    run = lambda xx: binary_conv2d(xx, wp, padding=1)  # noqa: E731
    times = _timed_pair(lambda: F.conv2d(x, wf, padding=1), lambda: run(xp), reps)
    e2e_ms = _timed_pair(lambda: None, lambda: run(pack_activations(x, ascales, abm)), reps)["new"]
    ops = 2.0 * b * o * c * 9 * hw * hw
    return _row("conv3x3", f"B{b} C{c} {hw}x{hw} O{o} pad1", wmix, amix, wp, xp, times, e2e_ms, ops)


def bench_variants(b: int, k: int, o: int, reps: int, gen) -> dict:
    """W1A1 GEMM time (ms, median) under each dispatch variant this CPU supports."""
    supported = cpu_features()["variants"]
    if not supported:
        return {}
    xp = pack_activations(torch.randn(b, k, generator=gen), torch.tensor([0.8]))
    wp = pack_planes(*_weight_planes((o, k), "1", gen))
    out = {}
    for v in supported:
        out[v] = round(_timed_pair(lambda: None, lambda: binary_linear(xp, wp, variant=v), reps)["new"], 3)
    return {"shape": f"B{b} K{k} O{o}", "kernel_ms": out}


def _row(op, shape, wmix, amix, wp, xp, times, e2e_ms, ops) -> dict:
    fp32_ms, kern_ms = times["ref"], times["new"]
    return {
        "op": op,
        "shape": shape,
        "bits": f"W{wmix}A{amix}",
        "planes": f"{wp.n}x{xp.n}",
        "masked_planes": f"w{sum(not f for f in wp.full)} x{sum(not f for f in xp.full)}",
        "fp32_ms": round(fp32_ms, 3),
        "kernel_ms": round(kern_ms, 3),
        "ratio_vs_fp32": round(fp32_ms / kern_ms, 2),
        "ratio_vs_fp32_best_of_reps": round(times["ref_min"] / times["new_min"], 2),
        "ratio_vs_fp32_cpu_time": round(times["ref_cpu"] / times["new_cpu"], 2),
        "with_act_pack_ms": round(e2e_ms, 3),
        "ratio_with_act_pack": round(fp32_ms / e2e_ms, 2),
        "fp32_gflops": round(ops / fp32_ms / 1e6, 1),
        "binary_gops_per_plane_pair": round(ops * wp.n * xp.n / kern_ms / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", default="2", help="comma-separated torch/OpenMP thread counts, e.g. 1,2")
    ap.add_argument("--quick", action="store_true", help="smaller shapes (a smoke test)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    gemm = (256, 1024, 1024) if args.quick else (1024, 4096, 4096)
    conv = (8, 128, 16, 128) if args.quick else (16, 256, 28, 256)
    mixes = [("1", "1"), ("2", "2"), ("1.4", "2"), ("1.4", "1.4"), ("1.4", "1")]
    rows = []
    for threads in [int(t) for t in str(args.threads).split(",")]:
        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(0)
        batch = [bench_gemm(*gemm, wm, am, args.reps, gen) for wm, am in mixes]
        batch += [bench_conv(*conv, wm, am, args.reps, gen) for wm, am in mixes]
        rows += [{"threads": threads, **r} for r in batch]
        variants = bench_variants(gemm[0] // 4, gemm[1], gemm[2], args.reps, gen)
    by = {(r["threads"], r["op"], r["bits"]): r for r in rows}
    hetero = {
        f"{op} threads={t}": round(by[(t, op, "W1.4A2")]["kernel_ms"] / by[(t, op, "W2A2")]["kernel_ms"], 2)
        for t, op, _ in by
        if _ == "W2A2"
    }
    features = cpu_features()
    result = {
        "benchmark": "bench_kernels",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": features,
        "variant": features["selected"],
        "reps": args.reps,
        "results": rows,
        "w1.4a2_over_w2a2_time": hetero,
        "w1a1_gemm_by_variant": {"threads": threads, **variants},
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
