"""``hbnn train``, ``hbnn eval`` and ``hbnn summary``: argparse front-ends over hbnn.train.

``hbnn eval --packed FILE`` hands over to :func:`hbnn.export.evaluate.evaluate_packed`.

Heavy imports happen inside the handlers so that ``hbnn --help`` stays fast. Handlers
raise ``ValueError`` subclasses (:mod:`hbnn.errors`) or ``OSError`` for user mistakes;
``hbnn.cli.main`` prints them as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "default_run_dir", "train_overrides", "RESUMABLE_KEYS"]

#: Settings that may change when resuming; anything else would break exact continuation.
RESUMABLE_KEYS = (
    "train.epochs", "train.eval_every", "train.checkpoint_every_steps", "train.log_every_steps",
    "train.device", "train.threads", "train.limit_test_batches", "train.eval_batch_size", "data.data_dir",
    "data.num_workers", "run.", "dist.",
)

_SHORTCUTS = (  # (flag, dest, config key, type, help)
    ("--model", "model", "model.name", str, "model name (hbnn.models.list_models())"),
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
    """Add the ``train``, ``eval`` and ``summary`` subcommands."""
    p = subparsers.add_parser(
        "train", help="train a model from a YAML recipe",
        description="Train from a recipe (configs/*.yaml); flags and --set override it; the "
                    "resolved config is saved in the run directory. Under torchrun, trains with DDP.")
    p.add_argument("config", nargs="?", help="YAML recipe: a path, or a name under configs/ "
                                             "(e.g. cifar10/w1.4_mo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.1 (repeatable; YAML values)")
    for flag, dest, _, tp, text in _SHORTCUTS:
        p.add_argument(flag, dest=dest, type=tp, help=text)
    p.add_argument("--out", help="run directory (default runs/<recipe>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument("--overwrite", action="store_true", help="start over in an existing run directory")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser(
        "eval", help="top-1/top-5 of a run, checkpoint or packed model on the test split",
        description="Evaluate a run directory or checkpoint; with --packed FILE, evaluate the packed model "
                    "(and, if RUN_DIR|CHECKPOINT is given too, compare it with that source on the same batches).")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", nargs="?")
    p.add_argument("--packed", metavar="FILE", help="evaluate this packed model file (hbnn export) instead")
    p.add_argument("--which", default="best", choices=("best", "last"),
                   help="checkpoint inside a run directory (default best, falling back to last)")
    p.add_argument("--data-dir", help="dataset folder (default: the run's)")
    p.add_argument("--batch-size", type=int, help="evaluation batch size")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--limit", type=int, help="evaluate a fixed subset of this many test samples")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser("summary", help="per-layer table: parameters, realized bits, size")
    p.add_argument("target", metavar="MODEL|RECIPE|RUN_DIR|CHECKPOINT")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set quant.default.weight.bits=1.4")
    p.add_argument("--dataset", help="input shape of this dataset (default: the recipe's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_summary)


def default_run_dir(recipe: Path | None, model: str, dataset: str) -> Path:
    """``runs/<recipe folder>-<recipe stem>``, or ``runs/<model>-<dataset>`` without a recipe."""
    if recipe is None:
        return Path("runs") / f"{model}-{dataset}"
    parent = recipe.resolve().parent.name
    stem = recipe.stem
    return Path("runs") / (f"{parent}-{stem}" if parent not in ("configs", "") else stem)


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` list plus the shortcut flags, as ``key=value`` strings (flags last)."""
    out = list(args.overrides)
    for _, dest, key, _, _ in _SHORTCUTS:
        value = getattr(args, dest)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return out


def _flatten(data: Any, prefix: str = "") -> dict:
    if isinstance(data, dict) and data:
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _check_resume_changes(old: dict, new: dict) -> None:
    from hbnn.errors import ConfigError

    a, b = _flatten(old), _flatten(new)
    if b.get("sched.name") == "cosine" and a.get("train.epochs") != b.get("train.epochs"):
        raise ConfigError("cannot change train.epochs when resuming a cosine schedule (its length is fixed "
                          "when the run starts); start a new run with --out instead")
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not any(key == k or (k.endswith(".") and key.startswith(k))
                                                for k in RESUMABLE_KEYS):
            raise ConfigError(f"cannot change {key} when resuming ({a.get(key)!r} -> {b.get(key)!r}); "
                              "start a new run with --out instead")


def _cmd_train(args: argparse.Namespace) -> int:
    from hbnn.errors import ConfigError
    from hbnn.train.config import config_to_dict, load_config, load_yaml_recipe
    from hbnn.train.run import fit

    overrides = train_overrides(args)
    if args.out is not None:
        overrides.append(f"run.out={json.dumps(args.out)}")
    if args.resume is not None:
        if args.config is not None:
            raise ConfigError("--resume takes the config from RUN_DIR/config.yaml; drop the recipe argument")
        if args.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"cannot resume: {run_dir} is not an hbnn run directory (no config.yaml)")
        saved = load_yaml_recipe(run_dir / "config.yaml")
        overrides = [o for o in overrides if not o.startswith("run.out=")]
        cfg = load_config(None, overrides, base=saved)
        _check_resume_changes(config_to_dict(load_config(None, (), base=saved)), config_to_dict(cfg))
        if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
            raise ConfigError(f"--out {args.out} differs from --resume {run_dir}; drop --out")
    else:
        from hbnn.train.config import resolve_recipe

        recipe = resolve_recipe(args.config) if args.config is not None else None
        cfg = load_config(recipe, overrides)
        run_dir = Path(cfg.run.out) if cfg.run.out else default_run_dir(recipe, cfg.model.name, cfg.data.name)
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

    if args.target is None and args.packed is None:
        raise ConfigError("eval: give a RUN_DIR or CHECKPOINT, or --packed FILE")
    if args.packed is not None:
        return _eval_packed(args)
    from hbnn.train.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(args.target, which=args.which, data_dir=args.data_dir,
                                 batch_size=args.batch_size, device=args.device, limit=args.limit)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"{result['checkpoint']}: {result['model']} on {result['dataset']} test "
              f"({result['count']} images, epoch {result['epoch']}): top1 {100 * result['top1']:.2f}%  "
              f"top5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}")
    return 0


def _eval_packed(args: argparse.Namespace) -> int:
    """``hbnn eval --packed FILE [RUN_DIR|CHECKPOINT]``: ``hbnn infer`` reached from ``eval``."""
    from hbnn.export.commands import format_eval
    from hbnn.export.evaluate import evaluate_packed

    if args.device == "cuda":
        raise ValueError("--device: packed models run on the CPU kernels; drop --device cuda")
    options = {} if args.batch_size is None else {"batch_size": args.batch_size}
    result = evaluate_packed(args.packed, data_dir=args.data_dir, limit=args.limit, compare=args.target,
                             which=args.which, **options)
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else format_eval(result))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from hbnn.train.evaluation import format_summary, summary_for

    title, summary = summary_for(args.target, args.overrides, args.dataset)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(title, summary))
    return 0
