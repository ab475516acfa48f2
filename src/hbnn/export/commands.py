"""``hbnn export`` and ``hbnn infer``: packed deployment from the command line.

- ``hbnn export RUN_DIR|CHECKPOINT --out FILE [--onnx FILE]`` writes the packed file (and
  optionally an ONNX model) and prints the size report;
- ``hbnn infer FILE [--compare RUN_DIR|CHECKPOINT [--which best|last]]`` evaluates a packed
  file on its test split (:func:`hbnn.export.evaluate.evaluate_packed`) and, with
  ``--compare``, runs the training-time model on the same batches.
- ``hbnn predict MODEL INPUTS... [--top-k K] [--json]`` prints the top classes of image
  files, folders or .npy arrays (:func:`hbnn.export.prediction.predict`).

Export and infer report progress on stderr (:mod:`hbnn.progress`; ``-q`` silences it).
Heavy imports live in the handlers; errors surface as one line and exit code 2 (``hbnn.cli``).
"""

from __future__ import annotations

import argparse
import json

__all__ = ["register", "format_eval"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export``, ``infer`` and ``predict`` subcommands."""
    p = subparsers.add_parser("export", help="write a trained model as a packed file (and ONNX)")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--out", required=True, metavar="FILE", help="packed model file to write (.hbnn)")
    p.add_argument("--onnx", metavar="FILE", help="also write a standard-ops ONNX model")
    p.add_argument("--which", default="best", choices=("best", "last", "calibrated"),
                   help="checkpoint inside a run directory (calibrated: written by hbnn calibrate)")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false", help="keep batch norms as separate ops")
    p.add_argument("--json", action="store_true", help="print the size report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser("infer", help="evaluate a packed model on its test split")
    p.add_argument("packed", metavar="FILE", help="packed model file")
    p.add_argument("--dataset", help="dataset name (default: the one recorded at export)")
    p.add_argument("--data-dir", help="dataset folder (default: the recorded one)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--limit", type=int, help="evaluate a fixed subset of this many test samples")
    p.add_argument("--backend", default="auto", choices=("auto", "c", "torch"), help="kernel backend")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--compare", metavar="RUN_DIR|CHECKPOINT",
                   help="also run the training-time model on the same batches and count differing predictions")
    p.add_argument("--which", default="best", choices=("best", "last", "calibrated"),
                   help="checkpoint inside --compare's run")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_infer)

    p = subparsers.add_parser(
        "predict", help="top classes of your own images or .npy arrays",
        description="Predict with a run directory, checkpoint or packed file. INPUTS: image files, folders (their "
                    "image files, sorted) or .npy arrays ([H,W], [C,H,W], [N,C,H,W] or [N,H,W] of the model's size; "
                    "uint8 0..255 or floats in [0,1]), preprocessed as the model's test split.")
    p.add_argument("model", metavar="MODEL", help="run directory, checkpoint or packed model file (.hbnn)")
    p.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files, folders or .npy arrays")
    p.add_argument("--top-k", type=int, help="classes per input (default 5, or all if fewer)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default 64)")
    p.add_argument("--recursive", "-r", action="store_true", help="also read the sub-folders of folders")
    p.add_argument("--which", default="best", choices=("best", "last", "calibrated"),
                   help="checkpoint inside a run directory (calibrated: written by hbnn calibrate)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {path, index, top_k: [{class, name, prob}]}")
    p.set_defaults(func=_cmd_predict)


def _cmd_export(args: argparse.Namespace) -> int:
    from hbnn.export.format import export_model, format_report
    from hbnn.export.source import model_from_checkpoint
    from hbnn.progress import make_progress

    # Phases, not batches: off a terminal a line as each one ends (every_n=1).
    with make_progress(3 if args.onnx else 2, f"export {args.out}", unit="phase", every_n=1,
                       enabled=not args.quiet) as progress:
        model, meta = model_from_checkpoint(args.target, args.which)
        progress.set_postfix(done="checkpoint loaded")
        progress.update(1)
        report = export_model(model, args.out, meta=meta, fold_bn=args.fold_bn)
        progress.set_postfix(done="packed file written")
        progress.update(1)
        if args.onnx:
            from hbnn.export.onnx_export import to_onnx

            to_onnx(args.out, args.onnx)
            progress.set_postfix(done="ONNX written")
            progress.update(1)
    if args.json:
        print(json.dumps({"out": args.out, "onnx": args.onnx, **report}, indent=2))
    else:
        print(f"wrote {args.out}" + (f" and {args.onnx}" if args.onnx else ""))
        print(format_report(report))
    return 0


def format_eval(result: dict) -> str:
    """One line (two with ``compare``) describing an :func:`evaluate_packed` result."""
    line = (f"{result['checkpoint']}: {result['model']} packed ({result['backend']} kernels) on {result['dataset']} "
            f"test ({result['count']} images): top1 {100 * result['top1']:.2f}%  top5 {100 * result['top5']:.2f}%  "
            f"loss {result['loss']:.4f}")
    cmp = result.get("compare")
    if cmp:
        line += (f"\nvs {cmp['checkpoint']}: top1 {100 * cmp['top1']:.2f}%, {cmp['mismatches']} of {result['count']} "
                 f"predictions differ, max |logit diff| {cmp['max_abs_logit_diff']:.3g}, "
                 f"{cmp['images_beyond_tol']} images beyond {cmp['tol']:g}")
    return line


def _cmd_infer(args: argparse.Namespace) -> int:
    from hbnn.export.evaluate import evaluate_packed

    result = evaluate_packed(args.packed, dataset=args.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
                             limit=args.limit, backend=args.backend, compare=args.compare, which=args.which,
                             progress=not args.quiet)
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else format_eval(result))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from hbnn.export.prediction import format_predictions, predict

    results = predict(args.model, args.inputs, top_k=args.top_k, batch_size=args.batch_size,
                      recursive=args.recursive, which=args.which)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0
