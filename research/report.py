"""Fill a markdown document's result tables from the result files (``python -m research plot report``).

A region in the document::

    <!-- hbnn plot fig2b --markdown -->
    ...generated, replaced on every run...
    <!-- /hbnn plot -->

is replaced by what ``python -m research plot fig2b --markdown`` prints (``<!-- hbnn plot
verdicts -->``: the verdict table; ``verdicts_by_scale``, ``training_length`` and ``curves``:
the tables of :mod:`research.scales` and :mod:`research.curves`; ``structure``: the table and
verdicts of :mod:`research.structure` from ``structure.jsonl`` and ``bench/structure.json``
of the results folder). A marker without a closing line gets one. So every number
in the document regenerates from the committed ``results/*.jsonl`` with one command. (The
markers keep their ``hbnn plot`` spelling, so documents written before the command moved
still refill.)
"""

from __future__ import annotations

import re
from pathlib import Path

from hbnn.errors import ConfigError

__all__ = ["experiment_markdown", "render_doc"]

_REGION = re.compile(
    r"(<!-- hbnn plot (?P<name>[\w.-]+)(?: --markdown)? -->\n)(?:(?!<!-- hbnn plot ).)*?<!-- /hbnn plot -->\n?"
    r"|(<!-- hbnn plot (?P<bare>[\w.-]+)(?: --markdown)? -->\n)",
    re.S,
)


def experiment_markdown(name: str, results: str | Path | None = None, results_dir: str | Path = "results",
                        prefix: str = "") -> str:
    """The markdown ``python -m research plot NAME --markdown`` prints (``verdicts``: the claim table)."""
    from hbnn.experiments.results import default_results_path, read_results
    from research.stats import aggregate, fig2a_markdown, gaps_markdown, markdown_table

    if name == "verdicts":
        from research.verdicts import verdicts_from_dir, verdicts_markdown

        return verdicts_markdown(verdicts_from_dir(results_dir, prefix))
    if name in _DIR_TABLES:
        return _DIR_TABLES[name](results_dir)
    path = Path(results) if results else Path(results_dir) / default_results_path(name).name
    if not path.exists():
        raise ConfigError(f"results file {path} not found; run 'hbnn sweep {name}' first or pass --results FILE")
    lines = read_results(path)
    if any(line.get("kind") == "fig2a" for line in lines):
        return fig2a_markdown(lines)
    stats = aggregate(lines)
    text = markdown_table(stats)
    if lines[-1].get("figure") == "pilot":
        text += "\n\n" + gaps_markdown(stats)
    return text


def _verdicts_by_scale(results_dir: str | Path) -> str:
    from research.scales import verdicts_by_scale_markdown

    return verdicts_by_scale_markdown(results_dir)


def _training_length(results_dir: str | Path) -> str:
    from research.scales import gaps_by_length_markdown

    return gaps_by_length_markdown(results_dir)


def _curves(results_dir: str | Path) -> str:
    from research.curves import curves_markdown

    path = Path(results_dir) / "curves_long.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} not found; collect curves with scripts/collect_curves.py")
    return curves_markdown(path)


def _structure(results_dir: str | Path) -> str:
    from research.structure import structure_markdown

    return structure_markdown(Path(results_dir) / "structure.jsonl", Path(results_dir) / "bench" / "structure.json")


#: Regions computed from the whole results folder rather than one results file.
_DIR_TABLES = {"verdicts_by_scale": _verdicts_by_scale, "training_length": _training_length, "curves": _curves,
               "structure": _structure}


def render_doc(text: str, results_dir: str | Path = "results") -> str:
    """``text`` with every ``<!-- hbnn plot -->`` region regenerated (missing result files: left as they are)."""

    def replace(match: re.Match) -> str:
        head = match.group(1) or match.group(3)
        name = match.group("name") or match.group("bare")
        try:
            body = experiment_markdown(name, results_dir=results_dir)
        except ConfigError:
            return match.group(0)
        return f"{head}{body.rstrip()}\n<!-- /hbnn plot -->\n"

    return _REGION.sub(replace, text)
