"""Packed-engine latency and size of every point of the structure study, against PyTorch fp32.

Run: ``python -m benchmarks.bench_structure [--experiment structure] [--runs-dir runs/sweeps]
[--set KEY=VALUE ...] [--only POINT ...] [--batch 64] [--reps 15] [--threads N]
[--input auto|test|random] [--quick] [--out FILE]``; prints one JSON object and, unless
``--quick``, writes it to ``results/bench/structure.json`` (``--out`` to choose).

For every point of the experiment (``configs/experiments/structure.yaml``; ``--set`` as given
to ``hbnn sweep``, so the configs and their hashes match) the point's model is

* the trained model of its seed-``--seed`` run folder
  ``<runs-dir>/<experiment>/<point>/seed<k>-<config hash>`` when that run finished (its last
  checkpoint has all the configured epochs; ``"weights": "trained"``), else
* a freshly initialised model (``torch.manual_seed(seed)``) whose activation quantizers are
  calibrated (:func:`hbnn.calibrate`) on a few N(0, 1) batches (``"weights": "random"``;
  other run folders of the point found are listed in ``other_run_dirs``).

Each model is exported (:func:`hbnn.export.export_model`) and loaded as a packed engine
(:func:`hbnn.export.load`). Then ONE round-robin times, on the same input batch, the float
model of the experiment's FP point in fp32 eval (PyTorch's default NCHW and channels-last)
and every point's packed engine: medians (and minima) of ``reps`` calls each, so every ratio
compares times measured together. Per point: ``packed_ms``, ``time_vs_fp32`` (packed /
fp32 NCHW), ``time_vs_fp32_channels_last``, ``time_vs_w2a2`` (packed / the W2A2 point's
packed), ``time_vs_ref`` against its reference (W2A2 for points with binarized activations,
W2 for weights-only points), the stored bits per binarized weight (planes + map + scales,
:func:`hbnn.export.storage_report`) and its ratio to the reference's, and parity of the
engine against the model it was exported from (prediction mismatches, largest logit
difference). Weights-only layers run as float convs of the decoded weights in the engine
(``binary_layers`` counts the bit-serial ones).

The input is ``--batch`` test images of the experiment's dataset when they can be loaded
(``--input auto``/``test``), else N(0, 1) (``random``); the JSON says which.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks._emit import emit
from benchmarks.bench_infer import _interleaved

__all__ = ["DEFAULT_OUT", "cpu_model", "bench_structure", "main"]

DEFAULT_OUT = "results/bench/structure.json"
INPUTS = ("auto", "test", "random")


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _select(runs: list, only: list[str]) -> list:
    if not only:
        return runs
    chosen = [r for r in runs if any(fnmatch.fnmatchcase(r.point, pat) for pat in only)]
    if not chosen:
        raise ValueError(f"--only {' '.join(only)}: matches no point")
    return chosen


def _finished_model(run, runs_dir: Path):
    """``(model, run_dir)`` of the run's finished folder, or ``(None, None)``."""
    from hbnn.errors import CheckpointError
    from hbnn.train.rebuild import model_from_checkpoint

    folder = run.run_dir(runs_dir)
    if not (folder / "last.safetensors").is_file():
        return None, None
    try:
        model, ckpt = model_from_checkpoint(folder, "last")
    except CheckpointError:
        return None, None
    if int(ckpt.metadata.get("epoch") or 0) < int(run.config["train"]["epochs"]):
        return None, None  # still training (or interrupted)
    return model.eval(), folder


def _fresh_model(run, shape: dict, seed: int, calib: list[torch.Tensor]):
    """The point's model at its initialisation, activation quantizers calibrated on ``calib``."""
    import hbnn
    from hbnn.train.config import config_from_dict
    from hbnn.train.rebuild import build_model_for

    cfg = config_from_dict(run.config)
    torch.manual_seed(seed)
    model, _ = build_model_for(cfg.model, shape, cfg.quant)
    if run.spec.get("act") is not None:  # weights-only points have no activation quantizer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hbnn.calibrate(model, calib)
    return model.eval()


def _input_batch(config: dict, shape: dict, batch: int, kind: str, seed: int) -> tuple[torch.Tensor, str]:
    """``batch`` test images of the config's dataset (``auto``: when loadable), else N(0, 1)."""
    if kind != "random":
        from hbnn.data import build_dataset, build_loader

        data = config["data"]
        try:  # preprocessed as the test split is in evaluation
            test = build_dataset(data["name"], "test", data.get("data_dir"), data.get("image_size"), limit=batch)
            loader = build_loader(test, batch_size=batch, train=False, seed=0, epoch=0, augment=False, num_workers=0)
            return next(iter(loader))[0], "test"
        except Exception as exc:  # noqa: BLE001 - any failure to read the data means random input
            if kind == "test":
                raise ValueError(f"--input test: cannot load {data['name']} ({exc})") from None
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(batch, shape["in_channels"], shape["image_size"], shape["image_size"], generator=gen), "random"


def _is(spec: dict, weight: float, act: float | None) -> bool:
    """A homogeneous per-entry point with these weight/activation bits (None = float)."""
    def same(value: Any, want: float | None) -> bool:
        return value is None if want is None else isinstance(value, (int, float)) and float(value) == want

    return (same(spec.get("weight"), weight) and same(spec.get("act"), act)
            and spec.get("structure", "entry") == "entry" and "layer_bits" not in spec)


def _point_row(run, engine, report: dict, weights: str, run_dir, others: list[str]) -> dict:
    from hbnn.export import PackedLayer

    spec, m = run.spec, report["model"]
    binary = sum(1 for _, layer in engine.named_layers() if isinstance(layer, PackedLayer) and layer.binary)
    return {
        "point": run.point, "label": spec.get("label", run.point), "weight": spec.get("weight"),
        "act": spec.get("act"), "structure": spec.get("structure", "entry") if spec.get("weight") is not None else None,
        "allocate": spec.get("allocate", "key") if spec.get("weight") is not None else None,
        "act_structure": spec.get("act_structure", "entry") if spec.get("act") is not None else None,
        "weights": weights, "run_dir": None if run_dir is None else str(run_dir), "other_run_dirs": others,
        "config_sha": run.sha, "binary_layers": binary, "file_bytes": m["file_bytes"],
        "bits_per_binarized_weight": m["bits_per_binarized_weight"],
        "bits_per_binarized_weight_split": m["bits_per_binarized_weight_split"],
    }


def _ratios(rows: list[dict], fp32: float, fp32_cl: float) -> None:
    """Add the time and size ratios against fp32, W2A2 and each point's reference, in place."""
    w2a2 = next((r for r in rows if r["_ref_key"] == "w2a2"), None)
    refs = {r["_ref_key"]: r for r in rows if r["_ref_key"] in ("w2a2", "w2")}
    for r in rows:
        r["time_vs_fp32"] = r["packed_ms"] / fp32
        r["time_vs_fp32_channels_last"] = r["packed_ms"] / fp32_cl
        r["time_vs_w2a2"] = None if w2a2 is None else r["packed_ms"] / w2a2["packed_ms"]
        ref = refs.get("w2a2" if r["act"] is not None else "w2") if r["weight"] is not None else None
        r["ref"] = None if ref is None else ref["point"]
        r["time_vs_ref"] = None if ref is None else r["packed_ms"] / ref["packed_ms"]
        r["min_time_vs_ref"] = None if ref is None else r["packed_min_ms"] / ref["packed_min_ms"]
        bits, ref_bits = r["bits_per_binarized_weight"], None if ref is None else ref["bits_per_binarized_weight"]
        r["bits_vs_ref"] = None if bits is None or not ref_bits else bits / ref_bits
    for r in rows:
        del r["_ref_key"]


def _ref_key(spec: dict) -> str | None:
    """``fp``, ``w2a2`` or ``w2`` for the reference points, else None."""
    if spec.get("weight") is None and spec.get("act") is None and "layer_bits" not in spec:
        return "fp"
    return "w2a2" if _is(spec, 2, 2) else "w2" if _is(spec, 2, None) else None


def bench_structure(*, experiment: str = "structure", runs_dir: str = "runs/sweeps", overrides: list[str] = (),
                    only: list[str] = (), seed: int = 0, batch: int = 64, reps: int = 15, threads: int | None = None,
                    input_kind: str = "auto", quick: bool = False) -> dict:
    """Build, export and time every point of ``experiment``; return the JSON-safe result.

    Args:
        experiment: experiment name or YAML path (``hbnn sweep``'s argument).
        runs_dir: the sweep's run directories (``hbnn sweep --runs-dir``).
        overrides: ``KEY=VALUE`` strings, as given to ``hbnn sweep --set``.
        only: fnmatch patterns of point names (default all points).
        seed: the run seed whose folders are read (and the fresh models' seed).
        batch, reps: images per forward pass; timed round-robin repetitions (medians).
        threads: ``torch.set_num_threads`` (default: torch's); the C kernels use the same count.
        input_kind: ``auto``, ``test`` or ``random`` (see the module docstring).
        quick: batch 8, 3 reps, 1 calibration batch of 8 (a smoke run; default: 8 batches of 64).
    """
    from hbnn.experiments.kinds import expand
    from hbnn.experiments.layerwise import config_shape
    from hbnn.experiments.spec import load_experiment
    from hbnn.export import export_model, load
    from hbnn.kernels import cpu_features
    from hbnn.train.config import config_from_dict
    from hbnn.train.rebuild import build_model_for

    if threads is not None:
        torch.set_num_threads(threads)
    if quick:
        batch, reps = min(batch, 8), min(reps, 3)
    exp = load_experiment(experiment)
    runs = _select(expand(exp, seeds=[seed], overrides=list(overrides)), list(only))
    shape = config_shape(runs[0].config["data"])
    x, x_kind = _input_batch(runs[0].config, shape, batch, input_kind, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    calib = [torch.randn(8 if quick else 64, *x.shape[1:], generator=gen) for _ in range(1 if quick else 8)]
    rows, engines, fp32 = [], {}, None
    with tempfile.TemporaryDirectory(prefix="hbnn-bench-structure-") as tmp, torch.no_grad():
        for run in runs:
            model, run_dir = _finished_model(run, Path(runs_dir))
            weights = "trained" if model is not None else "random"
            if model is None:
                model = _fresh_model(run, shape, seed, calib)
            if _ref_key(run.spec) == "fp":
                fp32 = model
            others = sorted(str(p) for p in (Path(runs_dir) / run.experiment / run.point).glob(f"seed{seed}-*")
                            if run_dir is None or p != run_dir)
            path = Path(tmp) / f"{run.point}.hbnn"
            report = export_model(model, path, input_shape=list(x.shape[1:]),
                                  meta={"model": {"name": run.config["model"]["name"]}})
            engine = engines[run.point] = load(path)
            row = _point_row(run, engine, report, weights, run_dir, others)
            ref, out = model(x), engine(x)
            row["mismatches"] = int((ref.argmax(1) != out.argmax(1)).sum())
            row["max_abs_logit_diff"] = float((ref - out).abs().max())
            row["_ref_key"] = _ref_key(run.spec)
            rows.append(row)
        if fp32 is None:  # no FP point selected: the float model of the first point's config
            cfg = config_from_dict(runs[0].config)
            torch.manual_seed(seed)
            fp32 = build_model_for(cfg.model, shape, None)[0].eval()
        fp32_cl = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        fns = {"fp32": lambda: fp32(x), "fp32_cl": lambda: fp32_cl(x_cl)}
        fns.update({f"packed:{name}": (lambda e=e: e(x)) for name, e in engines.items()})
        times, best = _interleaved(fns, reps)
    for row in rows:
        row["packed_ms"], row["packed_min_ms"] = times[f"packed:{row['point']}"], best[f"packed:{row['point']}"]
    _ratios(rows, times["fp32"], times["fp32_cl"])
    feats = cpu_features()
    return {
        "benchmark": "bench_structure", "experiment": exp.name, "runs_dir": str(runs_dir), "overrides": list(overrides),
        "model": runs[0].config["model"], "input": list(x.shape), "input_kind": x_kind, "seed": seed,
        "cpu_model": cpu_model(), "threads": torch.get_num_threads(), "kernel_variant": feats.get("selected"),
        "kernel_variants": feats.get("variants"), "torch": torch.__version__, "machine": platform.machine(),
        "reps": reps, "quick": quick, "fp32_ms": times["fp32"], "fp32_channels_last_ms": times["fp32_cl"],
        "fp32_min_ms": best["fp32"], "fp32_channels_last_min_ms": best["fp32_cl"],
        "weights": sorted({r["weights"] for r in rows}), "points": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run :func:`bench_structure`, print (and save) the JSON; bad flags exit 2."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_structure", description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="structure", help="experiment name or YAML path (default structure)")
    p.add_argument("--runs-dir", default="runs/sweeps", help="the sweep's run directories (default runs/sweeps)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides as given to hbnn sweep --set (repeatable)")
    p.add_argument("--only", action="append", default=[], metavar="POINT", help="points (fnmatch; repeatable)")
    p.add_argument("--seed", type=int, default=0, help="run seed whose folders are read (default 0)")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--reps", type=int, default=15, help="timed round-robin repetitions, medians (default 15)")
    p.add_argument("--threads", type=int, help="torch/kernel threads (default: torch's)")
    p.add_argument("--input", dest="input_kind", default="auto", choices=INPUTS,
                   help="test images (auto: when the dataset loads) or N(0, 1) random input")
    p.add_argument("--quick", action="store_true", help="batch 8, 3 reps (smoke run; writes no file unless --out)")
    p.add_argument("--out", metavar="FILE", help=f"write the JSON here (default {DEFAULT_OUT}; none with --quick)")
    args = p.parse_args(argv)
    for name in ("batch", "reps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name}: {value} is invalid; expected an integer >= 1")
    if args.seed < 0:
        p.error(f"--seed: {args.seed} is invalid; expected an integer >= 0")
    from hbnn.errors import ConfigError

    try:
        result = bench_structure(experiment=args.experiment, runs_dir=args.runs_dir, overrides=args.overrides,
                                 only=args.only, seed=args.seed, batch=args.batch, reps=args.reps,
                                 threads=args.threads, input_kind=args.input_kind, quick=args.quick)
    except (ConfigError, ValueError) as exc:
        p.error(str(exc))
    emit(result, args.out or (None if args.quick else DEFAULT_OUT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
