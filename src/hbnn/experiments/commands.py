"""``hbnn sweep``: the argparse front-end over :mod:`hbnn.experiments`.

Examples (from the repository root)::

    hbnn sweep fig2b --dry-run                  # list the runs and their states
    hbnn sweep fig2b                            # run what is missing -> results/fig2b.jsonl
    hbnn sweep fig3b --only 'w1.4' --seeds 0,1,2
    hbnn sweep fig2b --only w1.4_mo/seed0 --verify   # re-run a recorded run, compare accuracy

Figures, tables and claim checks from the result files are the repository's research
harness (``python -m research plot EXPERIMENT``), not part of the library.
Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "parse_seeds", "DEFAULT_RUNS_DIR"]

DEFAULT_RUNS_DIR = "runs/sweeps"


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; None stays None.

    Raises:
        ConfigError: anything but comma-separated integers >= 0.
    """
    from hbnn.errors import ConfigError

    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers >= 0, e.g. 0,1,2")
    return seeds


def register(subparsers: Any) -> None:
    """Add the ``sweep`` subcommand."""
    p = subparsers.add_parser(
        "sweep", help="run an experiment's grid of runs (resumable) into a results file",
        description="Expand configs/experiments/EXPERIMENT.yaml into runs <experiment>/<point>/seed<k>; "
                    "skip runs already in the results file (same run name and config hash), resume "
                    "interrupted ones, append one JSON line per finished run.")
    p.add_argument("experiment", help="experiment name (configs/experiments/NAME.yaml) or YAML path")
    p.add_argument("--results", help="results file (default results/<experiment>.jsonl)")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help=f"run directories (default {DEFAULT_RUNS_DIR})")
    p.add_argument("--seeds", help="comma-separated seeds for every point, e.g. 0,1,2 (default: the experiment's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run, e.g. data.data_dir=DIR (repeatable; a new "
                        "config hash unless the key is a location/logging/device key)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="only runs whose point or run name matches (fnmatch; repeatable), e.g. w1.4_mo/seed0")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their states, run nothing")
    p.add_argument("--verify", action="store_true",
                   help="re-run the selected finished runs from their recorded configs and compare accuracy")
    p.add_argument("--threads", type=int, help="torch CPU threads (recorded in each line; CPU results "
                                               "depend on it, --verify re-uses the recorded number)")
    p.add_argument("--verbose", "-v", action="store_true", help="per-epoch lines from training")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from hbnn.errors import ConfigError
    from hbnn.experiments.results import default_results_path, read_results
    from hbnn.experiments.runner import run_status, select_runs, sweep, verify
    from hbnn.experiments.kinds import expand
    from hbnn.experiments.spec import load_experiment

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads}: expected an integer >= 1")
        import torch

        torch.set_num_threads(args.threads)
    exp = load_experiment(args.experiment)
    runs = expand(exp, seeds=parse_seeds(args.seeds), overrides=args.overrides)
    runs = select_runs(runs, args.only)
    if not runs:
        raise ConfigError(f"--only {' '.join(args.only)}: matches no run of {exp.name}")
    results = Path(args.results) if args.results else default_results_path(exp.name)
    print(f"{exp.name}: {exp.description}" if exp.description else exp.name, flush=True)
    if args.verify:
        statuses = run_status(runs, read_results(results), args.runs_dir)
        if not any(s.state == "done" for s in statuses):
            raise ConfigError(f"--verify: none of the selected runs is recorded in {results}")
        return 0 if verify(statuses, args.runs_dir, quiet=not args.verbose) else 1
    sweep(runs, results, args.runs_dir, dry_run=args.dry_run, quiet=not args.verbose,
          echo=lambda text: print(text, flush=True))
    return 0
