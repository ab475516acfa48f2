#!/usr/bin/env python3
"""Parity of a trained ResNet-20: packed engine vs training-time model vs ONNX on the whole test split.

For each run directory (or checkpoint) given with ``--run``, the model is rebuilt from its
checkpoint (:func:`hbnn.export.source.model_from_checkpoint`, eval mode), exported with
:func:`hbnn.export.export_model` and :func:`hbnn.export.to_onnx`
into a temporary folder, and three computations -- the float32 eval model, the packed
engine (:func:`hbnn.export.load`, bit-serial kernels) and onnxruntime on the ONNX file --
see the same test batches (:func:`hbnn.export.evaluate.test_loader_for`). Each run is
exported twice (``--bn both``, the default): batch norms folded into the preceding
conv/linear (``hbnn export``'s default) and kept as ops (``hbnn export --no-fold-bn``),
the eval model's logits computed once for both. Per variant and pair
``(a, b)``: images whose argmax differs (indices, and the model's top-1 minus top-2 logit
there), ``max |logit_a - logit_b|``, and images beyond
:data:`hbnn.export.evaluate.LOGIT_TOL`.

Why the engine and the model can differ at all: a binarized layer's dot products are
exact integers in the engine (popcounts, then the scales), whereas the eval model sums
float32 products ``x_hat * w_hat`` and then applies batch norm in float32; a folded
batch norm is computed in float64 at export and rounded once (into the per-channel scale
and bias of a binarized layer, into the weights of a float one: the stem). So their
pre-binarization values differ by float rounding (about 1e-9 to 1e-6), and an entry lying within that distance of a decision boundary of the next
activation quantizer (``sign`` at 0, the residual boundaries, the map thresholds) is
binarized differently; the flipped bit then moves the logits by far more than rounding.

Two diagnostics tell which side is right and where it happens:

* **float64 judge** (always): on the images where engine and model logits differ beyond
  the tolerance, a float64 copy of the eval model (same maths, ~1e-16 rounding) says
  which float32 computation lies nearest exact arithmetic (:func:`judge_fp64`);
* **trace** (``--trace``): every image whose prediction differs, and up to
  ``--trace-images`` more whose logits differ beyond the tolerance, is re-run in its own
  evaluation batch with hooks; the first binarized layer whose quantized input differs,
  the entries flipped there and the gap ``|x_model - x_engine|`` at them are recorded
  (:func:`trace_flips`).

Training (run niced, one thread; the recipes are ``hbnn recipes``)::

    nice -n 10 .venv/bin/python -m hbnn.cli train fashion_mnist/resnet20_w1a1 --epochs 2 \\
        --set train.threads=1 --out runs/resnet20_parity/w1a1
    nice -n 10 .venv/bin/python -m hbnn.cli train fashion_mnist/resnet20_w1.4a1.4 --epochs 1 \\
        --set train.threads=1 --set train.limit_train_batches=60 --out runs/resnet20_parity/w1.4a1.4

Check (writes the JSON atomically; bad input exits 2 with one line)::

    .venv/bin/python scripts/resnet20_parity.py --run runs/resnet20_parity/w1a1 \\
        --run runs/resnet20_parity/w1.4a1.4 --trace --out results/resnet20_parity.json
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import torch

from hbnn.errors import HbnnError

__all__ = ["main", "check_run", "compare", "judge_fp64", "trace_flips"]

PAIRS = (("engine", "model"), ("onnx", "engine"), ("onnx", "model"))
FOLDS = {"folded": (True,), "kept": (False,), "both": (True, False)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compare(a: torch.Tensor, b: torch.Tensor, tol: float) -> dict:
    """Argmax mismatches (and their indices), max ``|a - b|`` and images beyond ``tol`` of ``[N, K]`` logits."""
    diff = (a.double() - b.double()).abs().amax(1)
    differ = (a.argmax(1) != b.argmax(1)).nonzero().flatten()
    return {"mismatches": int(differ.numel()), "mismatch_indices": differ.tolist(),
            "max_abs_logit_diff": float(diff.max()), "images_beyond_tol": int((diff > tol).sum())}


def _margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit per row."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def _onnx_session(model_path: Path):
    """An onnxruntime CPU session (one intra-op thread per torch thread), or None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def _onnx_runner(session):
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _evaluate(runners: dict, batches: list) -> tuple[dict, dict]:
    """``(logits per runner [N, K], seconds per runner)`` over the same ``(images, labels)`` batches."""
    logits: dict[str, list] = {k: [] for k in runners}
    seconds = dict.fromkeys(runners, 0.0)
    with torch.no_grad():
        for x, _ in batches:
            for name, run in runners.items():
                t = time.perf_counter()
                logits[name].append(run(x))
                seconds[name] += time.perf_counter() - t
    return {k: torch.cat(v) for k, v in logits.items()}, seconds


def judge_fp64(model, images: torch.Tensor, logits: dict, picked: list[int]) -> dict:
    """Which float32 computation the float64 model agrees with, on the ``picked`` images.

    A float64 copy of the eval model computes the same maths with ~1e-16 rounding, so where
    the float32 model and the engine disagree beyond the tolerance it tells which one
    binarized as exact arithmetic would. Per computation ``c``: ``closer[c]`` counts the
    picked images where ``c``'s logits are nearest the float64 ones (max-abs distance),
    ``argmax_agrees[c]`` those where its prediction equals the float64 prediction.
    """
    import copy

    if not picked:
        return {"images": 0}
    fp64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        ref = torch.cat([fp64(images[picked[i: i + 250]].double()) for i in range(0, len(picked), 250)])
    names = list(logits)
    dist = torch.stack([(logits[n][picked].double() - ref).abs().amax(1) for n in names])  # [C, P]
    closest = dist.argmin(0)
    return {"images": len(picked), "closer": {n: int((closest == k).sum()) for k, n in enumerate(names)},
            "argmax_agrees": {n: int((logits[n][picked].argmax(1) == ref.argmax(1)).sum()) for n in names},
            "max_abs_diff_to_fp64": {n: float(dist[k].max()) for k, n in enumerate(names)}}


# ------------------------------------------------------------------------------ trace


def _capture_model_inputs(model, names, x) -> dict:
    """The pre-binarization input of each named binarized layer of the eval model on ``x``."""
    seen, hooks = {}, []
    for name in names:
        layer = model.get_submodule(name)
        hooks.append(layer.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0].clone())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _capture_engine_inputs(engine, names, x) -> dict:
    """The same inputs as the engine computes them (its layers are named after the model's;
    run one node at a time so that the hooks of fused layers fire)."""
    layers = dict(engine.named_layers())
    seen, hooks = {}, []
    for name in names:
        hooks.append(layers[name].register_forward_pre_hook(
            lambda m, a, name=name: seen.__setitem__(name, a[0].contiguous().clone())))
    try:
        with engine.node_by_node():
            engine(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def trace_flips(model, engine, batch: torch.Tensor, rows: list[int]) -> list[dict]:
    """For rows of one evaluation batch: the first binarized layer whose quantized input differs.

    The batch is the one the images were evaluated in: float kernels may block (and so
    round) differently for another batch size, so a single image alone need not flip.
    Both pre-binarization inputs go through the *model's* activation quantizer (the
    engine's packing is bit-exact against it, ``tests/export``), so a difference is a
    flipped decision, not a different quantizer. Per row ``{"layer", "flipped",
    "entries", "max_gap_flipped", "max_gap_layer", "max_abs_value_flipped"}``: the
    layer (execution order), its flipped and total input entries, the gaps
    ``|x_model - x_engine|`` over the flipped entries and over the whole input of that
    image, and the largest ``|x_model|`` among flipped entries; ``{"layer": None}``
    when no quantized input of that image differs.
    """
    names = [n for n, m in engine.named_layers() if getattr(m, "act", None) is not None]
    ref, got = _capture_model_inputs(model, names, batch), _capture_engine_inputs(engine, names, batch)
    found: dict[int, dict] = {}
    for name in names:  # execution order: the first layer that flips a row's decision is recorded
        quant = model.get_submodule(name).act_quantizer
        with torch.no_grad():  # eval-mode quantizers binarize each sample on its own
            flipped = quant(ref[name]) != quant(got[name])
        gap = (ref[name] - got[name]).abs()
        for row in rows:
            if row not in found and flipped[row].any():
                f = flipped[row]
                found[row] = {"layer": name, "flipped": int(f.sum()), "entries": f.numel(),
                              "max_gap_flipped": float(gap[row][f].max()), "max_gap_layer": float(gap[row].max()),
                              "max_abs_value_flipped": float(ref[name][row][f].abs().max())}
    return [found.get(row, {"layer": None}) for row in rows]


def _trace(model, engine, images: torch.Tensor, batch_size: int, picked: list[int], differ: set) -> list[dict]:
    """:func:`trace_flips` of the ``picked`` images, batch by batch as they were evaluated."""
    out = []
    by_batch: dict[int, list[int]] = {}
    for i in picked:
        by_batch.setdefault(i // batch_size, []).append(i)
    for b, members in sorted(by_batch.items()):
        batch = images[b * batch_size: (b + 1) * batch_size]
        for i, rec in zip(members, trace_flips(model, engine, batch, [i - b * batch_size for i in members])):
            out.append({"index": i, "prediction_differs": i in differ, **rec})
    return out


# ------------------------------------------------------------------------------ one run


def check_run(run: str, *, which: str, batch_size: int, limit: int | None, backend: str, onnx: bool,
              folds: tuple[bool, ...], trace: bool, trace_images: int, workdir: Path) -> dict:
    """Evaluate one run's eval model on its test split, then each export variant (:func:`check_variant`)."""
    from hbnn.export.evaluate import test_loader_for
    from hbnn.export.source import model_from_checkpoint

    t = time.perf_counter()
    model, meta = model_from_checkpoint(run, which)
    name, loader = test_loader_for({"meta": {"data": meta["data"]}}, batch_size=batch_size, limit=limit)
    batches = list(loader)
    labels, images = torch.cat([y for _, y in batches]), torch.cat([x for x, _ in batches])
    logits, seconds = _evaluate({"model": model}, batches)
    wall = {"load": time.perf_counter() - t - seconds["model"], "model_eval": seconds["model"]}
    ckpt = Path(meta["source"]["checkpoint"])
    variants = {}
    for fold in folds:
        variants["fold_bn" if fold else "no_fold_bn"] = check_variant(
            model, meta, batches, images, labels, logits["model"], fold_bn=fold, backend=backend, onnx=onnx,
            trace=trace, trace_images=trace_images, workdir=workdir)
    return {"run": str(run), "checkpoint": str(ckpt), "checkpoint_sha256": _sha256(ckpt),
            "checkpoint_meta_sha256": meta["source"].get("sha256"), "epoch": meta["source"].get("epoch"),
            "step": meta["source"].get("step"), "config": _config_of(ckpt), "dataset": name,
            "count": int(labels.numel()), "backend": engine_backend(backend),
            "onnx": "onnxruntime " + _ort_version() if onnx and _has_ort() else None,
            "top1_model": float((logits["model"].argmax(1) == labels).float().mean()),
            "wall_s": {k: round(v, 2) for k, v in wall.items()}, "variants": variants}


def check_variant(model, meta: dict, batches: list, images: torch.Tensor, labels: torch.Tensor,
                  model_logits: torch.Tensor, *, fold_bn: bool, backend: str, onnx: bool, trace: bool,
                  trace_images: int, workdir: Path) -> dict:
    """Export ``model`` (batch norms folded or kept), run the engine and ONNX on ``batches``, compare."""
    from hbnn.export import export_model, load
    from hbnn.export.evaluate import LOGIT_TOL

    wall = {}
    t = time.perf_counter()
    packed = workdir / f"m_{fold_bn}.hbnn"
    report = export_model(model, packed, meta=meta, fold_bn=fold_bn)
    engine = load(packed, backend=backend)
    runners = {"engine": engine}
    wall["export"] = time.perf_counter() - t
    session = None
    if onnx:
        from hbnn.export import to_onnx

        t = time.perf_counter()
        to_onnx(packed, workdir / f"m_{fold_bn}.onnx")
        session = _onnx_session(workdir / f"m_{fold_bn}.onnx")
        if session is not None:
            runners["onnx"] = _onnx_runner(session)
        wall["onnx_export"] = time.perf_counter() - t
    logits, seconds = _evaluate(runners, batches)
    logits["model"] = model_logits
    wall.update({f"{k}_eval": v for k, v in seconds.items()})

    pairs = {f"{a}_vs_{b}": compare(logits[a], logits[b], LOGIT_TOL) for a, b in PAIRS if a in logits and b in logits}
    margin = _margin(model_logits)
    for entry in pairs.values():
        entry["model_margin_at_mismatches"] = [float(margin[i]) for i in entry["mismatch_indices"]]
    loose = ((logits["engine"] - model_logits).abs().amax(1) > LOGIT_TOL).nonzero().flatten().tolist()
    t = time.perf_counter()
    result = {"fold_bn": fold_bn, "packed_bytes": report["model"]["file_bytes"],
              "top1": {k: float((v.argmax(1) == labels).float().mean()) for k, v in logits.items()},
              "pairs": pairs, "tol": LOGIT_TOL,
              "fp64_judge_engine_vs_model_beyond_tol": judge_fp64(model, images, logits, loose)}
    wall["fp64_judge"] = time.perf_counter() - t
    if trace:
        differ = set(pairs["engine_vs_model"]["mismatch_indices"])
        picked = sorted(differ | set([i for i in loose if i not in differ][:trace_images]))
        t = time.perf_counter()
        result["trace"] = _trace(model, engine, images, len(batches[0][1]), picked, differ)
        wall["trace"] = time.perf_counter() - t
    result["wall_s"] = {k: round(v, 2) for k, v in wall.items()}
    return result


def _config_of(ckpt: Path) -> dict:
    from hbnn.train.rundir import load_run_checkpoint

    return load_run_checkpoint(ckpt).metadata["config"]


def engine_backend(backend: str) -> str:
    """The kernel backend ``auto`` resolves to."""
    from hbnn.kernels import available_backends

    return backend if backend != "auto" else available_backends()[0]


def _has_ort() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


# ------------------------------------------------------------------------------ main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="RUN_DIR|CHECKPOINT",
                   help="a trained run directory or checkpoint (repeatable)")
    p.add_argument("--out", required=True, help="JSON result file (written atomically)")
    p.add_argument("--which", default="best", choices=("best", "last"), help="checkpoint inside a run directory")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--limit", type=int, help="only this many test images (quick checks)")
    p.add_argument("--backend", default="auto", choices=("auto", "c", "torch"))
    p.add_argument("--threads", type=int, default=1, help="torch (and onnxruntime) CPU threads")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX export and onnxruntime")
    p.add_argument("--bn", default="both", choices=("folded", "kept", "both"),
                   help="export with batch norms folded (hbnn export's default), kept (--no-fold-bn), or both")
    p.add_argument("--trace", action="store_true", help="find the first flipped layer of differing images")
    p.add_argument("--trace-images", type=int, default=20,
                   help="with --trace, also trace this many images whose logits differ beyond the tolerance")
    return p


def _check_args(args) -> None:
    """One-line ConfigError/CheckpointError for bad input, before any work."""
    from hbnn.errors import ConfigError
    from hbnn.train.rebuild import resolve_checkpoint

    for name in ("batch_size", "threads"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: {getattr(args, name)} is invalid; expected an integer >= 1")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit: {args.limit} is invalid; expected an integer >= 1")
    for run in args.run:
        if not Path(run).exists() and not Path(run + ".safetensors").exists():
            raise ConfigError(f"--run: {run} does not exist (expected a run directory or checkpoint)")
        resolve_checkpoint(run, args.which)
    if not Path(args.out).parent.is_dir():
        raise ConfigError(f"--out: folder {Path(args.out).parent} does not exist")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from hbnn.experiments.results import git_commit, hardware_info
    from hbnn.io import atomic_write_json

    try:
        _check_args(args)
        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            runs = [check_run(run, which=args.which, batch_size=args.batch_size, limit=args.limit,
                              backend=args.backend, onnx=args.onnx, folds=FOLDS[args.bn], trace=args.trace,
                              trace_images=args.trace_images, workdir=Path(tmp)) for run in args.run]
    except HbnnError as exc:
        print(f"resnet20_parity: {exc}", file=sys.stderr)
        return 2
    command = "python scripts/resnet20_parity.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = {"command": command, "git_commit": git_commit(), "hardware": hardware_info("cpu"),
           "total_wall_s": round(time.perf_counter() - started, 1), "runs": runs}
    atomic_write_json(args.out, out)
    for r in runs:
        for name, v in r["variants"].items():
            em = v["pairs"]["engine_vs_model"]
            print(f"{r['run']} ({name}): top1 " + ", ".join(f"{k} {100 * a:.2f}%" for k, a in v["top1"].items())
                  + f"; engine vs model: {em['mismatches']} of {r['count']} predictions differ, "
                  f"max |logit diff| {em['max_abs_logit_diff']:.3g}, {em['images_beyond_tol']} images beyond tol")
    return 0


if __name__ == "__main__":
    sys.exit(main())
