"""Whole-net inference benchmark: packed ``cifar_fc4`` or ``resnet20`` engines against PyTorch fp32 eval.

Run: ``python -m benchmarks.bench_infer [--model cifar_fc4|resnet20] [--batch 64] [--reps 9]
[--threads N] [--image-size S] [--in-channels C] [--cases CASE ...] [--no-simulated]
[--quick] [--out FILE]`` (``make bench`` runs it through :mod:`benchmarks.run_all`); prints
one JSON object.

Cases (:func:`case_specs`): homogeneous ``W1A1``, ``W2A2``, per-entry ``W1.4A1.4`` (70/20/10,
middle-out) and structured 1.4-bit maps (:mod:`hbnn.quant.structure`, ``allocate: key``):
``W1.4A1.4-channel-pixel`` (one bitwidth per weight output row and per activation pixel) and
``W1.4A1.4-block64-group`` (64 consecutive inputs of a weight row; ``G`` consecutive
channels of an activation pixel, ``G = min(64, narrowest binarized input)``, e.g. 32 for
``cifar_fc4`` 32-64-128, 16 for ``resnet20``). Each case records ``structure`` (``entry``
or ``<weight>/<act>``) beside ``config`` and ``quant``. The float layers are those of the
zoo's conventions: ``cifar_fc4`` keeps its first and last layers float (as the paper);
``resnet20`` keeps the stem, the classifier and projection shortcuts float
(``hbnn.models.RESNET_QUANT``), the residual adds and shortcuts run in float.

All models share one seed; each quantized one is calibrated (train-mode passes on N(0, 1)
batches set BN and the activation quantizers' running estimates), exported and loaded as a
packed engine. Then ONE round-robin in one process times, on the same input batch
(``input``: N(0, 1), ``[batch, C, S, S]``): the float model in fp32 eval (``fp32_ms``,
PyTorch's default NCHW; ``fp32_channels_last_ms`` with model and input channels-last), each
training-time binarized model in eval (``simulated_ms``, float convs of ``x_hat``/``w_hat``;
``--no-simulated`` skips it) and each packed engine (``packed_ms``). Medians of ``reps``
wall-clock calls (``min_ms``: fastest; ``cpu_ms``: median process CPU time, all threads,
less sensitive to other processes on a shared machine), so every ratio compares times
measured together. ``targets`` lists the issues' whole-net goals with their measured
ratios (``met``).

``profile_ms`` splits one packed forward pass by stage, timing each step of the engine's
plan on its real inputs (warm buffers; medians, ``profile_min_ms`` the fastest runs):
``float_layers`` (float convs/linears), ``act_binarize_pack`` (binarize + pack the input of
a bit-serial layer), ``binary_kernels`` (bit-serial conv/linear with its fused epilogue: bias, and where the
plan fuses them the residual add and ReLU/Hardtanh after it), ``residual_add`` (adds left unfused),
``shortcut`` (nodes of shortcut paths: subsample, channel padding, identity, projection
conv) and ``other`` (pooling, activations, flatten). Parity of each engine against its model
is checked on the batch (prediction mismatches, largest logit difference).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks._emit import emit
from benchmarks.bench_kernels import cpu_model

__all__ = ["MODELS", "CASE_NAMES", "STAGES", "case_specs", "narrowest_binarized_input", "bench_infer", "profile_packed",
           "targets", "main"]

MODELS = ("cifar_fc4", "resnet20")
CASE_NAMES = ("W1A1", "W2A2", "W1.4A1.4", "W1.4A1.4-channel-pixel", "W1.4A1.4-block64-group")
STAGES = ("float_layers", "act_binarize_pack", "binary_kernels", "residual_add", "shortcut", "other")


def case_specs(group: int) -> dict[str, tuple[str, dict]]:
    """``name -> (structure, layer quant)`` of every case (``group``: the ``group<G>`` size)."""
    def spec(bits, w_st="entry", a_st="entry"):
        w, a = {"bits": bits}, {"bits": bits}
        if w_st != "entry":
            w["structure"], a["structure"] = w_st, a_st
        return ("entry" if w_st == "entry" else f"{w_st}/{a_st}"), {"weight": w, "act": a}

    return {"W1A1": spec(1), "W2A2": spec(2), "W1.4A1.4": spec(1.4),
            "W1.4A1.4-channel-pixel": spec(1.4, "channel", "pixel"),
            "W1.4A1.4-block64-group": spec(1.4, "block64", f"group{group}")}


def _round_robin(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, dict[str, float]]:
    """``{"median", "min", "cpu"}`` ms of each function, timed round-robin (one warm-up call each)."""
    for f in fns.values():
        f()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            wall[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
    return {"median": {k: statistics.median(v) for k, v in wall.items()}, "min": {k: min(v) for k, v in wall.items()},
            "cpu": {k: statistics.median(v) for k, v in cpu.items()}}


def _interleaved(fns: dict[str, Callable[[], object]], reps: int) -> tuple[dict[str, float], dict[str, float]]:
    """``(median ms, min ms)`` of each function, timed round-robin (one warm-up call each)."""
    t = _round_robin(fns, reps)
    return t["median"], t["min"]


def _times_ms(fn: Callable[..., object], reps: int, setup: Callable[[], tuple] | None = None) -> tuple[float, float]:
    """``(median, min)`` ms of ``fn(*setup())`` (``setup`` untimed, e.g. fresh copies for an in-place op)."""
    times = []
    for _ in range(reps):
        args = setup() if setup is not None else ()
        t0 = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


# ------------------------------------------------------------------ models
def _float_model(name: str, shape: tuple[int, int, int], widths, seed: int):
    from hbnn.models import build_model

    torch.manual_seed(seed)
    if name == "cifar_fc4":
        return build_model(name, num_classes=10, in_channels=shape[0], image_size=shape[1], activation="hardtanh",
                           widths=widths)
    return build_model(name, num_classes=10, in_channels=shape[0], image_size=shape[1])


def _quant_config(name: str, layer: dict) -> dict:
    from hbnn.models import RESNET_QUANT

    return {"default": layer, **(RESNET_QUANT if name == "resnet20" else {})}


def narrowest_binarized_input(name: str, shape, widths, seed: int = 0) -> int:
    """Fewest input channels per group over the layers the model's quant config binarizes."""
    from hbnn.convert import quantize_
    from hbnn.nn import HBConv2d, HBLinear

    model = _float_model(name, shape, widths, seed)
    quantize_(model, _quant_config(name, {"weight": 1, "act": 1}))
    sizes = [m.in_channels // m.groups if isinstance(m, HBConv2d) else m.in_features
             for m in model.modules() if isinstance(m, (HBConv2d, HBLinear))]
    return min(sizes)


def _simulated(name: str, layer: dict, shape, widths, calib: torch.Tensor, seed: int):
    """The quantized model, calibrated by train-mode passes over ``calib`` (BN and activation estimates)."""
    from hbnn.convert import quantize_

    sim = _float_model(name, shape, widths, seed)
    quantize_(sim, _quant_config(name, layer))
    sim.train()
    with torch.no_grad():
        for chunk in calib.split(max(1, calib.shape[0] // 4)):
            sim(chunk)
    return sim.eval()


# ------------------------------------------------------------------ profile
def _stage(name: str, layer) -> str:
    from hbnn.export.engine import PackedLayer
    from hbnn.export.ops import Add, PadChannels, Subsample

    if isinstance(layer, Add):
        return "residual_add"
    if "shortcut" in name.split(".") or isinstance(layer, (Subsample, PadChannels)):
        return "shortcut"
    if isinstance(layer, (PackedLayer, torch.nn.Conv2d, torch.nn.Linear)):
        return "float_layers"
    return "other"


def _in_place(layer) -> bool:
    from hbnn.export.engine import AddInto

    return isinstance(layer, AddInto) or bool(getattr(layer, "inplace", False))


def profile_packed(engine, x: torch.Tensor, reps: int) -> tuple[dict, dict, list]:
    """``(median ms per stage, fastest ms per stage, rows)`` of one packed forward pass on ``x``.

    Stages are :data:`STAGES` (sums over steps of each step's median, or fastest, of
    ``reps``); ``rows`` has one entry per step (``layer``, ``op``, ``stage``, median ``ms`` or
    ``pack_ms`` and ``kernel_ms`` for a bit-serial layer; ``fused``: the graph nodes a fused
    step computes, e.g. ``[conv2, add, act2]``, whose add and activation are then inside
    ``binary_kernels``).

    Walks the engine's execution plan (``engine.steps``, :mod:`hbnn.export.fusion`): step
    ``k`` is timed on its real inputs, on fresh copies when it writes into an input; a
    bit-serial layer (fused or not) is timed as packing and kernel apart.
    """
    from hbnn.export.engine import PackedLayer
    from hbnn.export.fusion import FusedEpilogue
    from hbnn.export.topology import last_uses

    stages, fastest = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)
    rows = []
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)  # as PackedModel.forward does
    values = {-1: x}
    frees = last_uses([st.inputs for st in engine.steps])
    with torch.no_grad():
        for k, st in enumerate(engine.steps):
            args = [values[j] for j in st.inputs]
            layer, name = st.module, engine.names[st.nodes[0]]
            row = {"layer": name, "op": type(layer).__name__}
            fused = isinstance(layer, FusedEpilogue)
            inner = layer.layer if fused else layer
            if isinstance(inner, PackedLayer) and inner.binary:
                xp = inner.pack_input(args[0])
                epi = (args[1] if len(args) > 1 else None, layer.clamp) if fused else (None, None)
                timed = {"act_binarize_pack": _times_ms(inner.pack_input, reps, lambda: (args[0],)),
                         "binary_kernels": _times_ms(inner.compute, reps, lambda: (xp, *epi))}
                row.update(stage="binary", pack_ms=timed["act_binarize_pack"][0], kernel_ms=timed["binary_kernels"][0])
                if fused:
                    row["fused"] = [engine.names[n] for n in st.nodes]
                out = inner.compute(xp, *epi)
            else:
                setup = (lambda: tuple(a.clone() for a in args)) if _in_place(layer) else (lambda: tuple(args))
                row["stage"] = _stage(name, layer)
                timed = {row["stage"]: _times_ms(layer, reps, setup)}
                row["ms"] = timed[row["stage"]][0]
                out = layer(*args)
            for stage, (med, low) in timed.items():
                stages[stage] += med
                fastest[stage] += low
            rows.append(row)
            for j in frees[k]:
                del values[j]
            values[st.node] = out
    return stages, fastest, rows


# ------------------------------------------------------------------ run
def targets(model: str, cases: list[dict]) -> list[dict]:
    """The issues' whole-net goals (those whose cases ran): ratio, target, met.

    Issue 10 (every model): structured W1.4A1.4 time <= 0.75 x packed W2A2, fp32 NCHW time
    >= 4 x and fp32 channels-last >= 2.5 x its time; fp32 NCHW >= 4 x packed W1A1.
    Issue 11 (``resnet20``): fp32 NCHW >= 3 x packed W1A1.
    """
    by = {c["config"]: c for c in cases}
    out = []

    def add(issue, case, what, value, op, goal):
        met = value <= goal if op == "<=" else value >= goal
        out.append({"issue": issue, "case": case, "ratio": what, "value": round(value, 3), "target": f"{op} {goal}",
                    "met": bool(met)})

    for name, c in by.items():
        if c["structure"] == "entry":
            continue
        if "W2A2" in by:
            add(10, name, "packed_ms / W2A2 packed_ms", c["packed_ms"] / by["W2A2"]["packed_ms"], "<=", 0.75)
        add(10, name, "fp32_ms / packed_ms", c["speedup_vs_fp32"], ">=", 4)
        add(10, name, "fp32_channels_last_ms / packed_ms", c["speedup_vs_fp32_channels_last"], ">=", 2.5)
    if "W1A1" in by:
        add(10, "W1A1", "fp32_ms / packed_ms", by["W1A1"]["speedup_vs_fp32"], ">=", 4)
        if model == "resnet20":
            add(11, "W1A1", "fp32_ms / packed_ms", by["W1A1"]["speedup_vs_fp32"], ">=", 3)
    return out


def _case_row(name, structure, quant, t, sim, engine, report, x) -> dict:
    fp32, fp32_cl, packed = t["median"]["fp32"], t["median"]["fp32_cl"], t["median"][f"packed:{name}"]
    with torch.no_grad():
        ref, out = sim(x), engine(x)
    keys = ["fp32", "fp32_cl", f"packed:{name}"] + ([f"simulated:{name}"] if f"simulated:{name}" in t["min"] else [])
    row = {
        "config": name, "structure": structure, "quant": quant,
        "fp32_ms": fp32, "fp32_channels_last_ms": fp32_cl, "packed_ms": packed,
        "speedup_vs_fp32": fp32 / packed, "speedup_vs_fp32_channels_last": fp32_cl / packed,
        "min_ms": {k.split(":")[0]: t["min"][k] for k in keys}, "cpu_ms": {k.split(":")[0]: t["cpu"][k] for k in keys},
        "speedup_vs_fp32_of_mins": t["min"]["fp32"] / t["min"][f"packed:{name}"],
        "speedup_vs_fp32_of_cpu_time": t["cpu"]["fp32"] / t["cpu"][f"packed:{name}"],
        "mismatches": int((ref.argmax(1) != out.argmax(1)).sum()),
        "max_abs_logit_diff": float((ref - out).abs().max()),
        "file_bytes": report["model"]["file_bytes"], "fp32_bytes": report["model"]["fp32_bytes"],
        "bits_per_binarized_weight": report["model"]["bits_per_binarized_weight"],
    }
    if f"simulated:{name}" in t["median"]:
        row["simulated_ms"] = t["median"][f"simulated:{name}"]
        row["speedup_vs_simulated"] = row["simulated_ms"] / packed
    return row


def bench_infer(*, model: str = "cifar_fc4", batch: int = 64, reps: int = 9, threads: int | None = None,
                quick: bool = False, cases: list[str] | None = None, image_size: int = 32, in_channels: int = 3,
                widths=(32, 64, 128), simulated: bool = True, seed: int = 0) -> dict:
    """Run the whole-net benchmark and return its JSON-safe result.

    Args:
        model: ``cifar_fc4`` or ``resnet20`` (width 1, shortcut A).
        batch: images per forward pass (one batch, reused).
        reps: timed repetitions (medians).
        threads: ``torch.set_num_threads`` for the run (default: leave as is); the C
            kernels use the same count.
        quick: 3 reps and batch 16 (a smoke run).
        cases: subset of :data:`CASE_NAMES` (default all).
        image_size, in_channels: the input (default CIFAR-10, 3 x 32 x 32; 1 x 28 x 28 for
            Fashion-MNIST).
        widths: ``cifar_fc4``'s widths (default 32-64-128).
        simulated: also time the training-time binarized models.
    """
    from hbnn.export.format import export_model, load
    from hbnn.kernels import cpu_features

    if model not in MODELS:
        raise ValueError(f"model: unknown {model!r}; allowed: {', '.join(MODELS)}")
    if threads is not None:
        torch.set_num_threads(threads)
    if quick:
        reps, batch = 3, min(batch, 16)
    names = cases or list(CASE_NAMES)
    unknown = [c for c in names if c not in CASE_NAMES]
    if unknown:
        raise ValueError(f"cases: unknown {unknown[0]!r}; allowed: {', '.join(CASE_NAMES)}")
    shape, widths = (in_channels, image_size, image_size), tuple(widths)
    specs = case_specs(min(64, narrowest_binarized_input(model, shape, widths, seed)))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *shape, generator=gen)
    calib = torch.randn(64 if quick else 128, *shape, generator=gen)
    fp32 = _float_model(model, shape, widths, seed).eval()
    fp32_cl = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    fns = {"fp32": lambda: fp32(x), "fp32_cl": lambda: fp32_cl(x_cl)}
    built = {}
    with tempfile.TemporaryDirectory(prefix="hbnn-bench-") as tmp:
        for n in names:
            structure, quant = specs[n]
            sim = _simulated(model, quant, shape, widths, calib, seed)
            report = export_model(sim, Path(tmp) / f"{n}.hbnn", input_shape=list(shape))
            built[n] = (structure, quant, sim, load(Path(tmp) / f"{n}.hbnn"), report)
    for n, (_, _, sim, engine, _) in built.items():
        fns[f"packed:{n}"] = (lambda e: lambda: e(x))(engine)
        if simulated:
            fns[f"simulated:{n}"] = (lambda m: lambda: m(x))(sim)
    with torch.no_grad():
        t = _round_robin(fns, reps)
    results = []
    for n, (structure, quant, sim, engine, report) in built.items():
        row = _case_row(n, structure, quant, t, sim, engine, report, x)
        row["profile_ms"], row["profile_min_ms"], row["layers"] = profile_packed(engine, x, reps)
        row["profile_total_ms"] = sum(row["profile_ms"].values())
        results.append(row)
    feats = cpu_features()
    return {
        "benchmark": "bench_infer", "model": model, "widths": list(widths) if model == "cifar_fc4" else None,
        "input": [batch, *shape], "input_kind": "N(0, 1)", "threads": torch.get_num_threads(), "reps": reps,
        "torch": torch.__version__, "machine": platform.machine(), "cpu_model": cpu_model(),
        "kernel_variant": feats.get("selected"), "cases": results, "targets": targets(model, results),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run :func:`bench_infer`, print (and save) the JSON; bad flags exit 2."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_infer", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, default="cifar_fc4", help="network (default cifar_fc4)")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--reps", type=int, default=9, help="timed repetitions, medians (default 9)")
    p.add_argument("--threads", type=int, help="torch/kernel threads (default: torch's)")
    p.add_argument("--image-size", type=int, default=32, help="input side (default 32; 28 for Fashion-MNIST)")
    p.add_argument("--in-channels", type=int, default=3, help="input channels (default 3; 1 for Fashion-MNIST)")
    p.add_argument("--cases", nargs="+", choices=CASE_NAMES, metavar="CASE", help=f"subset of {' '.join(CASE_NAMES)}")
    p.add_argument("--no-simulated", action="store_true", help="do not time the training-time binarized models")
    p.add_argument("--quick", action="store_true", help="3 reps, batch 16 (smoke run)")
    p.add_argument("--out", metavar="FILE", help="also write the JSON here")
    args = p.parse_args(argv)
    for name in ("batch", "reps", "threads", "image_size", "in_channels"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')}: {value} is invalid; expected an integer >= 1")
    result = bench_infer(model=args.model, batch=args.batch, reps=args.reps, threads=args.threads, quick=args.quick,
                         cases=args.cases, image_size=args.image_size, in_channels=args.in_channels,
                         simulated=not args.no_simulated)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
