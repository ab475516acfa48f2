"""Whole-net inference benchmark: a packed ``cifar_fc4`` (W1A1, W2A2, W1.4A1.4) against torch fp32 eval.

Run: ``python -m benchmarks.bench_infer [--batch 64] [--reps 9] [--threads N] [--cases CASE ...]
[--quick] [--out FILE]`` (``make bench`` runs it through :mod:`benchmarks.run_all`); prints
one JSON object.

For each bit setting (first and last layers float, as in the paper) the same randomly
initialised ``cifar_fc4`` is timed four ways, interleaved in one process so the ratios
survive a noisy machine: the float model in fp32 eval (``fp32_ms``, PyTorch's default
NCHW layout; ``fp32_channels_last_ms`` with model and input channels-last, much faster
on CPU for these shapes), the training-time binarized model in eval mode
(``simulated_ms``, float convs on ``x_hat``/``w_hat``) and the exported packed engine
(``packed_ms``). Medians of ``reps``; ``min_ms`` holds the fastest run of each (less
sensitive to other processes on a shared machine). ``profile_ms`` splits the packed time
by stage: float layers, activation binarize+pack, bit-serial kernels, and the rest
(pooling, activations, flatten), each layer timed alone on warm buffers. Parity is
checked on the same batch (prediction mismatches, largest logit difference).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

__all__ = ["CASES", "bench_infer", "profile_packed", "main"]

#: bit settings: name -> quant.default (keep_first/keep_last on).
CASES = {
    "W1A1": {"weight": 1, "act": 1},
    "W2A2": {"weight": 2, "act": 2},
    "W1.4A1.4": {"weight": 1.4, "act": 1.4},
}


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _interleaved(fns: dict[str, Callable[[], object]], reps: int) -> tuple[dict[str, float], dict[str, float]]:
    """``(median ms, min ms)`` of each function, timed round-robin (one warm-up call each)."""
    for f in fns.values():
        f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}, {k: min(v) for k, v in samples.items()}


def _models(quant: dict, shape: tuple[int, int, int], widths, calib: torch.Tensor, seed: int):
    from hbnn.convert import quantize_
    from hbnn.models import build_model

    def fresh():
        torch.manual_seed(seed)
        return build_model("cifar_fc4", num_classes=10, in_channels=shape[0], image_size=shape[1],
                           activation="hardtanh", widths=widths)

    fp32 = fresh().eval()
    sim = fresh()
    quantize_(sim, {"default": quant})
    sim.train()
    with torch.no_grad():
        for chunk in calib.split(max(1, calib.shape[0] // 4)):
            sim(chunk)  # calibrates BN and the activation quantizers' running estimates
    return fp32, sim.eval()


def profile_packed(engine, x: torch.Tensor, reps: int) -> tuple[dict, list]:
    """Median ms per stage and per layer of one packed forward pass on ``x``."""
    from hbnn.export.engine import PackedLayer

    stages = {"float_layers": 0.0, "act_binarize_pack": 0.0, "binary_kernels": 0.0, "other": 0.0}
    rows = []
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)  # as PackedModel.forward does
    with torch.no_grad():
        for name, layer in engine.named_layers():
            if isinstance(layer, PackedLayer) and layer.binary:
                xp = layer.pack_input(x)
                t_pack = _median_ms(lambda: layer.pack_input(x), reps)
                t_kernel = _median_ms(lambda: layer.compute(xp), reps)
                stages["act_binarize_pack"] += t_pack
                stages["binary_kernels"] += t_kernel
                rows.append({"layer": name, "kind": "binary", "pack_ms": t_pack, "kernel_ms": t_kernel})
                x = layer.compute(xp)
                continue
            t = _median_ms(lambda: layer(x), reps)
            kind = "float" if isinstance(layer, (PackedLayer, torch.nn.Conv2d, torch.nn.Linear)) else "other"
            stages["float_layers" if kind == "float" else "other"] += t
            rows.append({"layer": name, "kind": kind, "ms": t})
            x = layer(x)
    return stages, rows


def _case(name: str, quant: dict, x: torch.Tensor, shape, widths, reps: int, seed: int, folder: Path) -> dict:
    from hbnn.export.format import export_model, load

    fp32, sim = _models(quant, shape, widths, torch.randn(128, *shape), seed)
    report = export_model(sim, folder / f"{name}.hbnn", input_shape=list(shape))
    engine = load(folder / f"{name}.hbnn")
    fp32_cl = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref, out = sim(x), engine(x)
        times, best = _interleaved({"fp32": lambda: fp32(x), "fp32_cl": lambda: fp32_cl(x_cl),
                              "simulated": lambda: sim(x), "packed": lambda: engine(x)}, reps)
    stages, layers = profile_packed(engine, x, reps)
    return {
        "config": name, "quant": quant, "fp32_ms": times["fp32"], "fp32_channels_last_ms": times["fp32_cl"],
        "simulated_ms": times["simulated"], "packed_ms": times["packed"],
        "speedup_vs_fp32": times["fp32"] / times["packed"],
        "speedup_vs_fp32_channels_last": times["fp32_cl"] / times["packed"],
        "speedup_vs_simulated": times["simulated"] / times["packed"],
        "min_ms": best, "speedup_vs_fp32_of_mins": best["fp32"] / best["packed"],
        "mismatches": int((ref.argmax(1) != out.argmax(1)).sum()),
        "max_abs_logit_diff": float((ref - out).abs().max()),
        "file_bytes": report["model"]["file_bytes"], "fp32_bytes": report["model"]["fp32_bytes"],
        "bits_per_binarized_weight": report["model"]["bits_per_binarized_weight"],
        "profile_ms": stages, "layers": layers,
    }


def bench_infer(*, batch: int = 64, reps: int = 9, threads: int | None = None, quick: bool = False,
                cases: list[str] | None = None, image_size: int = 32, in_channels: int = 3,
                widths=(32, 64, 128), seed: int = 0) -> dict:
    """Run the whole-net benchmark and return its JSON-safe result.

    Args:
        batch: images per forward pass (one batch, reused).
        reps: timed repetitions (medians).
        threads: ``torch.set_num_threads`` for the run (default: leave as is); the C
            kernels use the same count.
        quick: 3 reps and batch 16 (a smoke run).
        cases: subset of :data:`CASES` (default all).
        image_size, in_channels, widths: the ``cifar_fc4`` shape (default CIFAR-10, 32-64-128).
    """
    from hbnn.kernels import cpu_features

    if threads is not None:
        torch.set_num_threads(threads)
    if quick:
        reps, batch = 3, min(batch, 16)
    names = cases or list(CASES)
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise ValueError(f"cases: unknown {unknown[0]!r}; allowed: {', '.join(CASES)}")
    shape = (in_channels, image_size, image_size)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *shape, generator=gen)
    with tempfile.TemporaryDirectory(prefix="hbnn-bench-") as tmp:
        results = [_case(n, CASES[n], x, shape, tuple(widths), reps, seed, Path(tmp)) for n in names]
    feats = cpu_features()
    return {
        "benchmark": "bench_infer", "model": "cifar_fc4", "widths": list(widths), "input": [batch, *shape],
        "threads": torch.get_num_threads(), "reps": reps, "torch": torch.__version__,
        "machine": platform.machine(), "processor": platform.processor() or None,
        "kernel_variant": feats.get("selected"), "cases": results,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run :func:`bench_infer`, print (and save) the JSON; bad flags exit 2."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_infer", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--reps", type=int, default=9, help="timed repetitions, medians (default 9)")
    p.add_argument("--threads", type=int, help="torch/kernel threads (default: torch's)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), metavar="CASE", help=f"subset of {' '.join(CASES)}")
    p.add_argument("--quick", action="store_true", help="3 reps, batch 16 (smoke run)")
    p.add_argument("--out", metavar="FILE", help="also write the JSON here")
    args = p.parse_args(argv)
    for name in ("batch", "reps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name}: {value} is invalid; expected an integer >= 1")
    result = bench_infer(batch=args.batch, reps=args.reps, threads=args.threads, quick=args.quick, cases=args.cases)
    if args.out:
        from hbnn.io import atomic_write_json

        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
