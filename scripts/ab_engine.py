#!/usr/bin/env python3
"""Side-by-side timings behind the kernel and engine notes (src/hbnn/kernels/README.md, docs/deploy.md).

The host's speed moves between runs, so these compare variants inside one process, or two
library versions alternated by ``scripts/ab_libraries.sh``. Prints one JSON line.

    python scripts/ab_engine.py conv --threads 1 --channels 16 --size 32     # one 3x3 conv, C = O
    python scripts/ab_engine.py epilogue --threads 1                         # stage-1 conv, epilogue fused or not
    python scripts/ab_engine.py plan --threads 2 [--model resnet20|cifar_fc4] # fused plan vs node by node

``conv``: binary 3x3 conv (pad 1, batch 64, random signs, C input = O output channels), CPU-time
minimum of 40 calls (``time.process_time``, all threads). ``epilogue``: the C16 O16 32x32 conv
with no epilogue, bias, bias + ReLU, bias + residual, bias + residual + ReLU in the kernel, and
the kernel followed by the three torch ops (medians of 50 calls, round-robin in blocks of 5).
``plan``: a calibrated W1A1 engine of ``benchmarks.bench_infer`` run with its fused plan and
``node_by_node()`` alternately, 5 blocks of 8 calls each (medians and minima).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _conv_setup(c: int, size: int):
    from hbnn.kernels import PackedPlanes, pack_activations, pack_conv_weight, prepare_weight

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64 * size * size, c, generator=g)
    p = pack_activations(x, torch.tensor([0.7]))
    xp = PackedPlanes(p.signs, p.masks, p.full, p.scales, (64, size, size, c))
    w = torch.randn(c, c, 3, 3, generator=g) > 0
    pw = prepare_weight(pack_conv_weight(w[None], torch.ones_like(w)[None], torch.tensor([0.5])))
    return xp, pw


def conv(c: int, size: int) -> dict:
    from hbnn.kernels import binary_conv2d

    xp, pw = _conv_setup(c, size)
    binary_conv2d(xp, pw, padding=1)
    cpu = []
    for _ in range(40):
        t0 = time.process_time()
        binary_conv2d(xp, pw, padding=1)
        cpu.append((time.process_time() - t0) * 1e3)
    return {"conv": f"C{c} O{c} {size}x{size} B64", "cpu_min_ms": round(min(cpu), 3)}


def epilogue() -> dict:
    from hbnn.kernels import Epilogue, binary_conv2d

    xp, pw = _conv_setup(16, 32)
    out = torch.empty(64 * 32 * 32 * 16)
    g = torch.Generator().manual_seed(1)
    bias = torch.randn(16, generator=g)
    res = torch.randn(64, 16, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    relu = (0.0, math.inf)
    cases = {"none": None, "bias": Epilogue(bias), "bias+relu": Epilogue(bias, None, relu),
             "bias+res": Epilogue(bias, res), "bias+res+relu": Epilogue(bias, res, relu)}
    fns = {k: (lambda e: lambda: binary_conv2d(xp, pw, padding=1, out=out, epilogue=e))(e) for k, e in cases.items()}

    def separate():
        y = binary_conv2d(xp, pw, padding=1, out=out)
        y.add_(bias.reshape(1, -1, 1, 1)).add_(res).relu_()

    fns["kernel then torch ops"] = separate
    return {"epilogue_median_ms": _blocks(fns, 10, 5)}


def _blocks(fns: dict, blocks: int, per: int) -> dict:
    times: dict = {k: [] for k in fns}
    for _ in range(blocks):
        for k, f in fns.items():
            f()
            for _ in range(per):
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def plan(model: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package
    from benchmarks import bench_infer as B
    from hbnn.export import export_model, load

    shape = (3, 32, 32)
    g = torch.Generator().manual_seed(1)
    x, calib = torch.randn(64, *shape, generator=g), torch.randn(128, *shape, generator=g)
    sim = B._simulated(model, B.case_specs(16)["W1A1"][1], shape, (32, 64, 128), calib, 0)
    with tempfile.TemporaryDirectory() as tmp:
        export_model(sim, Path(tmp) / "m.hbnn", input_shape=list(shape))
        engine = load(Path(tmp) / "m.hbnn")
    fused, plain = [], []
    with torch.no_grad():
        engine(x)
        for _ in range(5):
            fused += _timed(lambda: engine(x), 8)
            with engine.node_by_node():
                plain += _timed(lambda: engine(x), 8)
    return {"model": model, "fused_ms": [round(statistics.median(fused), 2), round(min(fused), 2)],
            "node_by_node_ms": [round(statistics.median(plain), 2), round(min(plain), 2)]}


def _timed(f, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["conv", "epilogue", "plan"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--model", default="resnet20", choices=["resnet20", "cifar_fc4"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    result = conv(a.channels, a.size) if a.what == "conv" else epilogue() if a.what == "epilogue" else plan(a.model)
    print(json.dumps({"threads": a.threads, **result}), flush=True)


if __name__ == "__main__":
    main()
