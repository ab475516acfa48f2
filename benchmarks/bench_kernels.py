"""Bit-serial kernels vs PyTorch fp32 on the same shapes (GEMM and 3x3 conv), per bit-map structure.

Run: ``python -m benchmarks.bench_kernels [--reps 5] [--threads 2] [--quick] [--out FILE]``.
Prints one JSON object.  Each case times ``torch.matmul``/``F.conv2d`` fp32 and the
packed kernel alternately in the same process (medians of ``reps``), so the ratio
``fp32_ms / kernel_ms`` is robust to the machine's load; ``kernel_ms`` excludes packing
of the inputs and preparing the weight (an engine prepares weights at load,
``hbnn.kernels.prepare_weight``, and packs activations in the producing layer's epilogue);
``with_act_pack_ms`` adds packing the float activations (``pack_activations``).

Bits: ``W1.4`` = 70/20/10 mix of 1/2/3 bits over the structure's units (3 planes, planes
2-3 masked), ``A1.4`` likewise for activations.  ``structure`` names the units
(``hbnn.quant.structure``): weights ``entry`` (one entry, the paper), ``channel`` (one output
row), ``block64`` (64 consecutive inputs of a row in OHWI order); activations ``entry``,
``pixel`` (all C channels of one input position; one sample of a linear input),
``group64`` (64 consecutive channels at a pixel).  ``uniform`` = no masks (W1A1, W2A2).
The maps are built here from random unit bitwidths with the mix's exact counts.

Ratios in each row: ``ratio_vs_w2a2`` (kernel time over the W2A2 case of the same op and
thread count), ``ratio_vs_w1a1`` (W1.4A1 only), ``ratio_vs_fp32`` (fp32 time over kernel
time: > 1 is faster than fp32).  ``targets`` lists the issue's goals per structure.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks._emit import emit
from hbnn.kernels import (
    binary_conv2d,
    binary_linear,
    cpu_features,
    pack_activations,
    pack_conv_weight,
    pack_planes,
    prepare_weight,
)

MIXES = {"1": (1.0,), "2": (0.0, 1.0), "1.4": (0.7, 0.2, 0.1)}
ACT_SCALES = (0.8, 0.3, 0.1)
# (weight structure, activation structure) for the masked mixes; W1A1 / W2A2 are "uniform".
STRUCTURES = (("entry", "entry"), ("channel", "pixel"), ("block64", "group64"))
BITS = (("1", "1"), ("2", "2"), ("1.4", "2"), ("1.4", "1.4"), ("1.4", "1"))
TARGETS = {"W1.4A2/W2A2": 0.8, "W1.4A1.4/W2A2": 0.6, "W1.4A1/W1A1": 1.5}


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def unit_levels(n_units: int, mix: str, gen: torch.Generator) -> torch.Tensor:
    """Bitwidths 1..3 of ``n_units`` units with the mix's exact counts, in random order."""
    fr = MIXES[mix]
    counts = [round(f * n_units) for f in fr[:-1]]
    counts.append(n_units - sum(counts))
    lv = torch.cat([torch.full((c,), b + 1, dtype=torch.int8) for b, c in enumerate(counts)])
    return lv[torch.randperm(n_units, generator=gen)]


def row_bitmap(rows: int, length: int, unit: int, mix: str, gen) -> torch.Tensor:
    """int8 ``[rows, length]``: runs of ``unit`` entries of each row share a bitwidth (unit 1 = per entry)."""
    per_row = (length + unit - 1) // unit
    lv = unit_levels(rows * per_row, mix, gen).reshape(rows, per_row)
    return lv.repeat_interleave(unit, dim=1)[:, :length].contiguous()


def _unit(structure: str, length: int) -> int:
    return {"entry": 1, "channel": length, "pixel": length}.get(structure) or int(structure.lstrip("blockgrup"))


def weight_bitmap(shape: tuple, mix: str, structure: str, gen) -> torch.Tensor:
    """Bit map of a weight ``[O, K]`` or ``[O, C, kh, kw]`` (units along OHWI rows)."""
    if len(shape) == 2:
        return row_bitmap(shape[0], shape[1], _unit(structure, shape[1]), mix, gen)
    o, c, kh, kw = shape
    bm = row_bitmap(o, kh * kw * c, _unit(structure, kh * kw * c), mix, gen)
    return bm.reshape(o, kh, kw, c).permute(0, 3, 1, 2).contiguous()


def act_bitmap(shape: tuple, mix: str, structure: str, gen) -> torch.Tensor:
    """Bit map of an activation ``[B, K]`` or ``[B, C, H, W]`` (units along the channels of a position)."""
    if len(shape) == 2:
        return row_bitmap(shape[0], shape[1], _unit(structure, shape[1]), mix, gen)
    b, c, h, w = shape
    bm = row_bitmap(b * h * w, c, _unit(structure, c), mix, gen)
    return bm.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()


def weight_planes(shape: tuple, mix: str, structure: str, gen):
    """Random ``(signs, masks, scales)`` of a weight (per-channel scales)."""
    n = len(MIXES[mix])
    bm = weight_bitmap(shape, mix, structure, gen) if n > 1 and mix != "2" else None
    signs = torch.rand((n, *shape), generator=gen) > 0.5
    masks = None if bm is None else torch.stack([bm > i for i in range(n)])
    return signs, masks, torch.rand(n, shape[0], generator=gen) + 0.5


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


def _case(op, x, wshape, bits, structure, reps, gen, fp32, kernel, packer, ops) -> dict:
    """Time one (op, bits, structure) case: fp32 vs the kernel on a prepared weight."""
    (wmix, amix), (wst, ast) = bits, structure
    abm = act_bitmap(tuple(x.shape), amix, ast, gen) if amix == "1.4" else None
    ascales = torch.tensor(ACT_SCALES[: len(MIXES[amix])])
    xp = pack_activations(x, ascales, abm)
    wp = packer(*weight_planes(wshape, wmix, wst, gen))
    t0 = time.perf_counter()
    pw = prepare_weight(wp)
    prep_ms = (time.perf_counter() - t0) * 1e3
    times = _timed_pair(fp32, lambda: kernel(xp, pw), reps)
    e2e_ms = _timed_pair(lambda: None, lambda: kernel(pack_activations(x, ascales, abm), pw), reps)["new"]
    label = "uniform" if wmix == amix and wmix in ("1", "2") else f"{wst}/{ast}"
    row = {"op": op, "bits": f"W{wmix}A{amix}", "structure": label, "config": f"W{wmix}A{amix} {label}",
           "w_structure": wst if wmix == "1.4" else "uniform", "a_structure": ast if amix == "1.4" else "uniform",
           "planes": f"{wp.n}x{xp.n}", "masked_planes": f"w{sum(not f for f in wp.full)} x{sum(not f for f in xp.full)}",
           "weight_panels": pw.status_counts(), "weight_rows_permuted": pw.permuted, "prepare_ms": round(prep_ms, 3)}
    fp32_ms, kern_ms = times["ref"], times["new"]
    row.update({
        "fp32_ms": round(fp32_ms, 3),
        "kernel_ms": round(kern_ms, 3),
        "ratio_vs_fp32": round(fp32_ms / kern_ms, 2),
        "ratio_vs_fp32_best_of_reps": round(times["ref_min"] / times["new_min"], 2),
        "ratio_vs_fp32_cpu_time": round(times["ref_cpu"] / times["new_cpu"], 2),
        "with_act_pack_ms": round(e2e_ms, 3),
        "ratio_with_act_pack": round(fp32_ms / e2e_ms, 2),
        "fp32_gflops": round(ops / fp32_ms / 1e6, 1),
        "binary_gops_per_plane_pair": round(ops * wp.n * xp.n / kern_ms / 1e6, 1),
    })
    return row


def bench_gemm(b: int, k: int, o: int, bits, structure, reps: int, gen) -> dict:
    x, wf = torch.randn(b, k, generator=gen), torch.randn(o, k, generator=gen)
    row = _case("gemm", x, (o, k), bits, structure, reps, gen, lambda: torch.matmul(x, wf.T), binary_linear,
                pack_planes, 2.0 * b * k * o)
    return {"shape": f"B{b} K{k} O{o}", **row}


def bench_conv(b: int, c: int, hw: int, o: int, bits, structure, reps: int, gen) -> dict:
    x, wf = torch.randn(b, c, hw, hw, generator=gen), torch.randn(o, c, 3, 3, generator=gen)
    row = _case("conv3x3", x, (o, c, 3, 3), bits, structure, reps, gen, lambda: F.conv2d(x, wf, padding=1),
                lambda xx, ww: binary_conv2d(xx, ww, padding=1), pack_conv_weight, 2.0 * b * o * c * 9 * hw * hw)
    return {"shape": f"B{b} C{c} {hw}x{hw} O{o} pad1", **row}


def bench_variants(b: int, k: int, o: int, reps: int, gen) -> dict:
    """W1A1 GEMM time (ms, median) under each dispatch variant this CPU supports."""
    supported = cpu_features()["variants"]
    if not supported:
        return {}
    xp = pack_activations(torch.randn(b, k, generator=gen), torch.tensor([0.8]))
    pw = prepare_weight(pack_planes(*weight_planes((o, k), "1", "entry", gen)))
    out = {}
    for v in supported:
        out[v] = round(_timed_pair(lambda: None, lambda: binary_linear(xp, pw, variant=v), reps)["new"], 3)
    return {"shape": f"B{b} K{k} O{o}", "kernel_ms": out}


def _cases():
    """(bits, structure) of every case: W1A1 / W2A2 once, each masked mix once per structure."""
    out = []
    for bits in BITS:
        for st in STRUCTURES if "1.4" in bits else STRUCTURES[:1]:
            out.append((bits, st))
    return out


def summarize(rows: list[dict]) -> dict:
    """Per (threads, op, structure): the issue's ratios next to their targets (``met``)."""
    by = {(r["threads"], r["op"], r["bits"], r["structure"]): r for r in rows}
    out = {}
    for (t, op, bits, st), r in by.items():
        if st == "uniform":
            continue
        ref = {"W1.4A2": "W2A2", "W1.4A1.4": "W2A2", "W1.4A1": "W1A1"}[bits]
        key = f"{bits}/{ref}"
        ratio = round(r["kernel_ms"] / by[(t, op, ref, "uniform")]["kernel_ms"], 3)
        out.setdefault(f"{op} threads={t} {st}", {})[key] = {"ratio": ratio, "target": TARGETS[key],
                                                             "met": ratio <= TARGETS[key]}
    return out


def _add_ratios(rows: list[dict]) -> None:
    base = {(r["threads"], r["op"], r["bits"]): r["kernel_ms"] for r in rows if r["structure"] == "uniform"}
    for r in rows:
        r["ratio_vs_w2a2"] = round(r["kernel_ms"] / base[(r["threads"], r["op"], "W2A2")], 3)
        if r["bits"] == "W1.4A1":
            r["ratio_vs_w1a1"] = round(r["kernel_ms"] / base[(r["threads"], r["op"], "W1A1")], 3)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", default="2", help="comma-separated torch/OpenMP thread counts, e.g. 1,2")
    ap.add_argument("--quick", action="store_true", help="small shapes (a smoke test that runs in seconds)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    gemm = (128, 1024, 512) if args.quick else (1024, 4096, 4096)
    conv = (2, 128, 14, 128) if args.quick else (16, 256, 28, 256)
    rows, variants = [], {}
    for threads in [int(t) for t in str(args.threads).split(",")]:
        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(0)
        batch = [bench_gemm(*gemm, bits, st, args.reps, gen) for bits, st in _cases()]
        batch += [bench_conv(*conv, bits, st, args.reps, gen) for bits, st in _cases()]
        rows += [{"threads": threads, **r} for r in batch]
        variants = {"threads": threads, **bench_variants(gemm[0] // 4, gemm[1], gemm[2], args.reps, gen)}
    _add_ratios(rows)
    features = cpu_features()
    result = {
        "benchmark": "bench_kernels",
        "quick": args.quick,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu": features,
        "variant": features["selected"],
        "reps": args.reps,
        "results": rows,
        "targets": summarize(rows),
        "w1a1_gemm_by_variant": variants,
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
