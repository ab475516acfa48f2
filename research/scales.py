"""The claims at several training lengths: verdicts side by side, and gaps against epochs.

The same experiments run at three scales, told apart by the result-file prefix:

=========  ==========  =========================================================
prefix     epochs      experiments (configs/experiments/)
=========  ==========  =========================================================
``""``     2           fig2b, mix, table1, fig3a, fig3b (``_scale.yaml``)
``mid_``   6           mid_fig2b, mid_table1 (claims ii and v only; ``_scale_mid.yaml``)
``long_``  15          long_fig2b, long_mix, long_table1 (``_scale_long.yaml``, converged)
=========  ==========  =========================================================

Every verdict comes from :mod:`research.verdicts` with its one rule, unchanged; this module
only puts the scales next to each other. The epochs of a scale are read from its result
lines (``config.train.epochs``), not assumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

from hbnn.experiments.results import read_results
from research.verdicts import K, Verdict, verdicts

__all__ = ["SCALES", "LENGTH_CLAIMS", "scale_results", "verdicts_by_scale", "verdicts_by_scale_markdown",
           "gaps_by_length", "gaps_by_length_markdown", "plot_training_length"]

#: ``(label, results-file prefix)`` of the scales, shortest first.
SCALES: tuple[tuple[str, str], ...] = (("2 epochs", ""), ("6 epochs", "mid_"), ("converged", "long_"))
#: The claims whose gap is drawn against training length: ``claim -> (number key, y label)``.
LENGTH_CLAIMS = {"ii": ("gap", "2-bit minus 1.4-bit weights (points)"),
                 "v": ("diff", "1.4/1.4 minus 2/2 (points)")}
_EXPERIMENTS = ("fig2b", "fig3b", "fig3a", "mix", "table1")


def scale_results(folder: str | Path, prefix: str) -> dict[str, list[dict]]:
    """Result lines of one scale, keyed by the unprefixed experiment name (missing files: empty)."""
    folder = Path(folder)
    return {name: read_results(folder / f"{prefix}{name}.jsonl") for name in _EXPERIMENTS}


def _epochs(results: Mapping[str, list[dict]]) -> int | None:
    found = {line.get("config", {}).get("train", {}).get("epochs") for lines in results.values() for line in lines}
    found.discard(None)
    return found.pop() if len(found) == 1 else None


def verdicts_by_scale(folder: str | Path, scales: Sequence[tuple[str, str]] = SCALES
                      ) -> list[tuple[str, int | None, list[Verdict]]]:
    """``[(label, epochs, verdicts)]`` for every scale with at least one result file."""
    out = []
    for label, prefix in scales:
        results = scale_results(folder, prefix)
        if any(results.values()):
            out.append((label, _epochs(results), verdicts(results)))
    return out


def verdicts_by_scale_markdown(folder: str | Path, scales: Sequence[tuple[str, str]] = (SCALES[0], SCALES[2])) -> str:
    """One row per claim, one column per scale (verdict and its numbers).

    Args:
        folder: the results folder.
        scales: the scales to show (default: 2 epochs and converged).
    """
    found = verdicts_by_scale(folder, scales)
    if not found:
        return "No result files found."
    titles = [label if label.endswith("epochs") else f"{label} ({epochs or '?'} epochs)" for label, epochs, _ in found]
    head = "| claim | " + " | ".join(titles) + " |"
    rows = [head, "|---" * (len(found) + 1) + "|"]
    for i, first in enumerate(found[0][2]):
        cells = [f"**{v[i].status}**: " + v[i].detail.replace("|", "\\|") for _, _, v in found]
        rows.append(f"| ({first.claim}) {first.text} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + (f"\n\nSame rule at every scale: held / did not hold when the ±{K:g} standard-error "
                              "interval lies entirely on one side of the claim's bound (see research.verdicts).")


def gaps_by_length(folder: str | Path, scales: Sequence[tuple[str, str]] = SCALES
                   ) -> dict[str, list[tuple[int, float, float | None, str]]]:
    """For claims (ii) and (v): ``claim -> [(epochs, value, se, status)]``, scales with both points."""
    out: dict[str, list[tuple[int, float, float | None, str]]] = {c: [] for c in LENGTH_CLAIMS}
    for _, epochs, items in verdicts_by_scale(folder, scales):
        for v in items:
            if v.claim in LENGTH_CLAIMS and epochs is not None and LENGTH_CLAIMS[v.claim][0] in v.numbers:
                out[v.claim].append((epochs, v.numbers[LENGTH_CLAIMS[v.claim][0]], v.numbers.get("se"), v.status))
    return {c: sorted(points) for c, points in out.items()}


def gaps_by_length_markdown(folder: str | Path) -> str:
    """Claims (ii) and (v) at every training length: one row per scale, value ± 2 se and verdict."""
    gaps = gaps_by_length(folder)
    epochs = sorted({p[0] for points in gaps.values() for p in points})
    if not epochs:
        return "No result files found."
    rows = ["| epochs | " + " | ".join(f"({c}) {LENGTH_CLAIMS[c][1]}" for c in LENGTH_CLAIMS) + " |",
            "|---" * (len(LENGTH_CLAIMS) + 1) + "|"]
    for e in epochs:
        cells = []
        for claim in LENGTH_CLAIMS:
            found = [p for p in gaps[claim] if p[0] == e]
            if not found:
                cells.append("not run")
                continue
            _, value, se, status = found[0]
            spread = "" if se is None else f" ± {K * se:.2f}"
            cells.append(f"{value:+.2f}{spread} (**{status}**)")
        rows.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_training_length(folder: str | Path, path: str | Path) -> Path:
    """Draw the (ii) and (v) gaps against training epochs, ±2 se bars, with each claim's bound.

    Returns:
        The PNG path.

    Raises:
        ConfigError: no scale has both points of either claim.
    """
    from hbnn.errors import ConfigError
    from research.plots import pyplot, save_png

    gaps = gaps_by_length(folder)
    if not any(gaps.values()):
        raise ConfigError(f"no results for claims (ii) or (v) in {folder}; run 'hbnn sweep fig2b' / 'long_fig2b' first")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    bounds = {"ii": (0.3, "claimed bound 0.3"), "v": (0.0, "claimed > 0")}
    for ax, claim in zip(axes, LENGTH_CLAIMS):
        points = gaps[claim]
        xs = [p[0] for p in points]
        ax.errorbar(xs, [p[1] for p in points], yerr=[0.0 if p[2] is None else K * p[2] for p in points],
                    marker="o", capsize=4, color="C0")
        for x, y, _, status in points:
            ax.annotate(status.split(" (")[0], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=7)
        ax.axhline(bounds[claim][0], color="grey", ls="--", lw=1, label=bounds[claim][1])
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set(title=f"claim ({claim})", xlabel="training epochs", ylabel=LENGTH_CLAIMS[claim][1])
        ax.set_xticks(sorted(set(xs)) or [2, 6, 15])
        if xs:  # room for the status labels right of the last point
            ax.set_xlim(min(xs) - 1, max(xs) + 0.25 * (max(xs) - min(xs)) + 2)
        ax.legend(fontsize=7)
    fig.suptitle("Gaps against training length (mean over seeds, ±2 se)", fontsize=9)
    return save_png(fig, Path(path))

