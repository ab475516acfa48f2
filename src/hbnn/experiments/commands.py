"""``hbnn sweep`` and ``hbnn plot``: argparse front-ends over :mod:`hbnn.experiments`.

Examples (from the repository root)::

    hbnn sweep fig2b --dry-run                  # list the runs and their states
    hbnn sweep fig2b                            # run what is missing -> results/fig2b.jsonl
    hbnn sweep fig3b --only 'w1.4' --seeds 0,1,2
    hbnn sweep fig2b --only w1.4_mo/seed0 --verify   # re-run a recorded run, compare accuracy
    hbnn plot fig2b                             # docs/figures/fig2b.png
    hbnn plot table1 --markdown                 # the aggregated table, for docs/results.md
    hbnn plot verdicts                          # the five claim checks from results/*.jsonl

Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "parse_seeds", "DEFAULT_RUNS_DIR", "DEFAULT_FIGURES_DIR"]

DEFAULT_RUNS_DIR = "runs/sweeps"
DEFAULT_FIGURES_DIR = "docs/figures"


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
    """Add the ``sweep`` and ``plot`` subcommands."""
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

    p = subparsers.add_parser(
        "plot", help="figures and tables from result files only",
        description="Draw EXPERIMENT's figure from its results file (PNG), print its aggregated table "
                    "(--markdown), or print the five claim verdicts (EXPERIMENT = verdicts).")
    p.add_argument("experiment", help="experiment name, 'verdicts', or 'report' (fill --doc from the results)")
    p.add_argument("--doc", default="docs/results.md", help="report: the markdown file whose hbnn plot regions to refill")
    p.add_argument("--results", help="results file (default results/<experiment>.jsonl)")
    p.add_argument("--out", default=DEFAULT_FIGURES_DIR, help=f"output folder (default {DEFAULT_FIGURES_DIR})")
    p.add_argument("--markdown", action="store_true", help="print the aggregated markdown table instead")
    p.add_argument("--results-dir", default="results", help="verdicts: folder of the results files")
    p.add_argument("--prefix", default="", help="verdicts: results file prefix, e.g. cifar10_")
    p.set_defaults(func=_cmd_plot)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from hbnn.errors import ConfigError
    from hbnn.experiments.results import default_results_path, read_results
    from hbnn.experiments.runner import run_status, select_runs, sweep, verify
    from hbnn.experiments.spec import expand, load_experiment

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


def _cmd_plot(args: argparse.Namespace) -> int:
    from hbnn.errors import ConfigError
    from hbnn.experiments.results import default_results_path, read_results

    if args.experiment == "report":
        from hbnn.experiments.report import render_doc
        from hbnn.io import atomic_write_text

        doc = Path(args.doc)
        if not doc.is_file():
            raise ConfigError(f"--doc: {doc} not found")
        atomic_write_text(doc, render_doc(doc.read_text(encoding="utf-8"), args.results_dir))
        print(f"updated {doc}")
        return 0
    if args.experiment == "verdicts" or args.markdown:
        from hbnn.experiments.report import experiment_markdown

        print(experiment_markdown(args.experiment, args.results, args.results_dir, args.prefix))
        return 0
    results = Path(args.results) if args.results else default_results_path(args.experiment)
    if not results.exists():
        raise ConfigError(f"results file {results} not found; run 'hbnn sweep {args.experiment}' first "
                          "or pass --results FILE")
    lines = read_results(results)
    from hbnn.experiments.plots import plot_lines

    for path in plot_lines(lines, args.out, args.experiment, results):
        print(path)
    return 0
