"""``python -m research``: the research harness's command line (run from the repository root).

- ``python -m research showcase [--out runs/showcase] ...`` -- the README's main job
  (:mod:`research.showcase`);
- ``python -m research plot EXPERIMENT`` -- the figure from ``results/EXPERIMENT.jsonl``
  (:mod:`research.plots`); ``--markdown`` prints its aggregated table instead;
- ``python -m research plot verdicts [--results-dir results] [--prefix P]`` -- the five
  claim checks (:mod:`research.verdicts`): without ``--prefix``, the 2-epoch and the
  converged scale side by side (:mod:`research.scales`);
- ``python -m research plot training_length`` -- claims (ii) and (v) against training epochs
  (``docs/figures/training_length.png``);
- ``python -m research plot curves [--results results/curves_long.jsonl]`` -- mean test
  accuracy per epoch of the longer scales (``docs/figures/training_curves.png``; ``--markdown``
  prints the final accuracy and the gain in the last 3 epochs instead, :mod:`research.curves`);
- ``python -m research plot structure [--results results/structure.jsonl] [--bench
  results/bench/structure.json]`` -- accuracy against packed-engine latency of the structure
  study (``docs/figures/structure.png``; ``--markdown`` prints the table and the verdict per
  structure instead, :mod:`research.structure`);
- ``python -m research plot report [--doc docs/results.md]`` -- refill the document's
  result regions (:mod:`research.report`).

Parsing, one-line errors (exit code 2) and ``HBNN_DEBUG=1`` are those of :mod:`hbnn.cli`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hbnn.cli import exit_process, main as _hbnn_main, new_parser
from research import showcase

__all__ = ["DEFAULT_FIGURES_DIR", "build_parser", "main", "run"]

PROG = "python -m research"
DEFAULT_FIGURES_DIR = "docs/figures"


def _register_plot(subparsers: Any) -> None:
    """Add the ``plot`` subcommand."""
    p = subparsers.add_parser(
        "plot", help="figures and tables from result files only",
        description="Draw EXPERIMENT's figure from its results file (PNG), print its aggregated table "
                    "(--markdown), or print the five claim verdicts (EXPERIMENT = verdicts).")
    p.add_argument("experiment", help="experiment name, 'verdicts', 'training_length' (claims ii and v against epochs), "
                                          "'curves' (test accuracy per epoch), "
                                          "'structure' (accuracy vs packed latency, with --bench), "
                                          "or 'report' (fill --doc from the results)")
    p.add_argument("--doc", default="docs/results.md", help="report: the markdown file whose hbnn plot regions to refill")
    p.add_argument("--results", help="results file (default results/<experiment>.jsonl)")
    p.add_argument("--out", default=DEFAULT_FIGURES_DIR, help=f"output folder (default {DEFAULT_FIGURES_DIR})")
    p.add_argument("--markdown", action="store_true", help="print the aggregated markdown table instead")
    p.add_argument("--results-dir", default="results", help="verdicts: folder of the results files")
    p.add_argument("--bench", help="structure: the bench_structure JSON (default <results-dir>/bench/structure.json)")
    p.add_argument("--prefix", default=None,
                   help="verdicts: only the results files with this prefix, e.g. cifar10_ or long_ (default: "
                        "the 2-epoch and the converged scale side by side)")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from hbnn.errors import ConfigError
    from hbnn.experiments.results import default_results_path, read_results

    if args.experiment == "report":
        from hbnn.io import atomic_write_text
        from research.report import render_doc

        doc = Path(args.doc)
        if not doc.is_file():
            raise ConfigError(f"--doc: {doc} not found")
        atomic_write_text(doc, render_doc(doc.read_text(encoding="utf-8"), args.results_dir))
        print(f"updated {doc}")
        return 0
    if args.experiment == "verdicts" and args.prefix is None:
        from research.scales import verdicts_by_scale_markdown

        print(verdicts_by_scale_markdown(args.results_dir))
        return 0
    if args.experiment == "training_length":
        from research.scales import plot_training_length

        print(plot_training_length(args.results_dir, Path(args.out) / "training_length.png"))
        return 0
    if args.experiment == "curves":
        from research.curves import curves_markdown, plot_curves

        path = Path(args.results or "results/curves_long.jsonl")
        if not path.is_file():
            raise ConfigError(f"--results: {path} not found; collect curves with scripts/collect_curves.py")
        print(curves_markdown(path) if args.markdown else plot_curves(path, Path(args.out) / "training_curves.png"))
        return 0
    if args.experiment == "structure":
        from research.structure import plot_structure, structure_markdown

        results = Path(args.results or Path(args.results_dir) / "structure.jsonl")
        bench = Path(args.bench or Path(args.results_dir) / "bench" / "structure.json")
        print(structure_markdown(results, bench) if args.markdown
              else plot_structure(results, bench, Path(args.out) / "structure.png"))
        return 0
    if args.experiment == "verdicts" or args.markdown:
        from research.report import experiment_markdown

        print(experiment_markdown(args.experiment, args.results, args.results_dir, args.prefix or ""))
        return 0
    results = Path(args.results) if args.results else default_results_path(args.experiment)
    if not results.exists():
        raise ConfigError(f"results file {results} not found; run 'hbnn sweep {args.experiment}' first "
                          "or pass --results FILE")
    lines = read_results(results)
    from research.plots import plot_lines

    for path in plot_lines(lines, args.out, args.experiment, results):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m research`` parser: ``showcase`` and ``plot``."""
    parser, sub = new_parser(PROG, "hbnn research harness: the showcase, figures, tables and claim checks")
    showcase.register(sub)
    _register_plot(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``python -m research`` command; returns the exit code (2 after a user mistake)."""
    return _hbnn_main(argv, parser=build_parser())


def run() -> None:
    """``python -m research``: :func:`main`, then :func:`hbnn.cli.exit_process`."""
    exit_process(main())
