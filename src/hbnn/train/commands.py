"""``hbnn train``, ``hbnn eval``, ``hbnn summary`` and ``hbnn recipes``: argparse front-ends over hbnn.train.

Where a run goes and whether it may resume is :func:`hbnn.train.rundir.plan_run`'s call.
Packed files are evaluated by ``hbnn infer`` (:mod:`hbnn.export.commands`).

Heavy imports happen inside the handlers so that ``hbnn --help`` stays fast. Handlers
raise ``ValueError`` subclasses (:mod:`hbnn.errors`) or ``OSError`` for user mistakes;
``hbnn.cli.main`` prints them as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["register", "train_overrides"]

_SHORTCUTS = (  # (flag, dest, config key, type, help)
    ("--model", "model", "model.name", str, "model name (hbnn.models.list_models()) or a user model "
                                             "package.module:callable (recorded in the run's config)"),
    ("--dataset", "dataset", "data.name", str, "dataset name"),
    ("--data-dir", "data_dir", "data.data_dir", str, "dataset folder"),
    ("--epochs", "epochs", "train.epochs", int, "number of epochs"),
    ("--batch-size", "batch_size", "train.batch_size", int, "global batch size"),
    ("--lr", "lr", "optim.lr", float, "learning rate"),
    ("--optimizer", "optimizer", "optim.name", str, "sgd, adam or adamw"),
    ("--seed", "seed", "train.seed", int, "random seed"),
    ("--device", "device", "train.device", str, "auto, cpu or cuda"),
)


def register(subparsers: Any) -> None:
    """Add the ``train``, ``eval``, ``summary`` and ``recipes`` subcommands."""
    p = subparsers.add_parser(
        "train", help="train a model from a YAML recipe",
        description="Train from a recipe (hbnn recipes lists them); flags and --set override it; the "
                    "resolved config is saved in the run directory. Under torchrun, trains with DDP.")
    p.add_argument("config", nargs="?", help="YAML recipe: a path, or a name from hbnn recipes "
                                             "(e.g. cifar10/w1.4_mo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.1 (repeatable; YAML values)")
    for flag, dest, _, tp, text in _SHORTCUTS:
        p.add_argument(flag, dest=dest, type=tp, help=text)
    p.add_argument("--out", help="run directory (default runs/<recipe>)")
    p.add_argument("--resume", metavar="RUN_DIR", nargs="?", const=True,
                   help="continue the run in RUN_DIR (default: --out) exactly, from wherever it was "
                        "stopped; with a recipe, a run killed before its config was written starts")
    p.add_argument("--overwrite", action="store_true", help="start over in an existing run directory")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser(
        "eval", help="top-1/top-5 of a run or checkpoint on the test split",
        description="Evaluate a run directory or checkpoint (a packed model file: hbnn infer FILE).")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", nargs="?")
    p.add_argument("--which", default="best", choices=("best", "last", "calibrated"),
                   help="checkpoint inside a run directory (default best, falling back to last; "
                        "calibrated: written by hbnn calibrate)")
    p.add_argument("--data-dir", help="dataset folder (default: the run's)")
    p.add_argument("--batch-size", type=int, help="evaluation batch size")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--limit", type=int, help="evaluate a fixed subset of this many test samples")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser("summary", help="per-layer table: parameters, realized bits, size")
    p.add_argument("target", metavar="MODEL|RECIPE|RUN_DIR|CHECKPOINT")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set quant.default.weight.bits=1.4")
    p.add_argument("--dataset", help="input shape of this dataset (default: the recipe's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_summary)

    p = subparsers.add_parser(
        "calibrate", help="set a run's activation estimates from training batches (-> calibrated checkpoint)",
        description="Rebuild the run's checkpoint, run N training batches (no augmentation) through it to set "
                    "every activation quantizer's running estimates (hbnn.calibrate: BatchNorm and weights "
                    "untouched), and write RUN/calibrated.safetensors (+ .json), a checkpoint of the same run "
                    "that hbnn eval/export --which calibrated read; best/last are unchanged.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--batches", type=int, default=20, help="training batches to calibrate on (default 20)")
    p.add_argument("--data-dir", help="dataset folder (default: the run's)")
    p.add_argument("--which", default="best", choices=("best", "last"),
                   help="checkpoint to calibrate (default best, falling back to last)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_calibrate)

    p = subparsers.add_parser(
        "recipes", help="list the training recipe names hbnn train takes",
        description="List the training recipes of every config root (hbnn.configs: $HBNN_CONFIGS, "
                    "./configs, the recipes shipped with hbnn), one name per line.")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, path}")
    p.set_defaults(func=_cmd_recipes)


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` list plus the shortcut flags, as ``key=value`` strings (flags last)."""
    out = list(args.overrides)
    for _, dest, key, _, _ in _SHORTCUTS:
        value = getattr(args, dest)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from hbnn.train.run import fit
    from hbnn.train.rundir import plan_run

    cfg, run_dir = plan_run(args.config, train_overrides(args), out=args.out, resume=args.resume,
                            overwrite=args.overwrite)
    try:
        result = fit(cfg, run_dir, resume=args.resume is not None, overwrite=args.overwrite, quiet=args.quiet)
    except RuntimeError as exc:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise
        # A peer died or timed out inside a collective: say so in one line, exit non-zero.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"hbnn: error: rank {os.environ.get('RANK', '?')}: distributed training failed "
              f"(a peer process died or timed out): {first}", file=sys.stderr)
        return 1
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        top1 = result.get("top1")
        print(f"done: {run_dir}  epoch {result['epoch']}  step {result['step']}"
              + (f"  test top1 {100 * top1:.2f}%" if isinstance(top1, float) else ""))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from hbnn.errors import ConfigError

    if args.target is None:
        raise ConfigError("eval: give a RUN_DIR or CHECKPOINT (a packed file: hbnn infer FILE)")
    from hbnn.train.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(args.target, which=args.which, data_dir=args.data_dir,
                                 batch_size=args.batch_size, device=args.device, limit=args.limit,
                                 progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"{result['checkpoint']}: {result['model']} on {result['dataset']} test "
              f"({result['count']} images, epoch {result['epoch']}): top1 {100 * result['top1']:.2f}%  "
              f"top5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from hbnn.train.evaluation import format_summary, summary_for

    title, summary = summary_for(args.target, args.overrides, args.dataset)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(title, summary))
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from hbnn.configs import find_config, list_recipes

    names = list_recipes()
    if args.json:
        print(json.dumps([{"name": n, "path": str(find_config(n))} for n in names], indent=2))
    else:
        print("\n".join(names))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from hbnn.train.calibration import calibrate_run

    result, text = calibrate_run(args.run, batches=args.batches, data_dir=args.data_dir, which=args.which,
                                 device=args.device)
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text)
    return 0
