"""Per-epoch test curves of the longer scales: does the test accuracy flatten?

``results/curves_long.jsonl`` (written by ``scripts/collect_curves.py`` from the sweeps' run
folders) holds one line per run: ``run`` (``experiment/point/seedN``), ``epoch``,
``test_top1``, ``train_top1`` and ``lr`` lists. This module averages them over seeds per
``(experiment, point)`` and reports how much the mean test top-1 still moved at the end:

    tail_gain = mean_top1[last epoch] - mean_top1[last epoch - tail]
    head_gain = mean_top1[epoch 1 + HEAD] - mean_top1[epoch 1]

in points (``tail`` = 3 epochs by default). A schedule has converged when the learning rate
has decayed to ~0 and the tail gain is small against the seed spread; the table says both,
the figure shows the curves.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hbnn.experiments.results import read_results

__all__ = ["Curve", "HEAD", "mean_curves", "curves_markdown", "plot_curves"]

#: Epochs after the first over which the table reports the early gain (epochs 1 to HEAD + 1).
HEAD = 4


@dataclass(frozen=True)
class Curve:
    """The seed-mean test curve of one point.

    Attributes:
        experiment: e.g. ``long_fig2b``.
        point: e.g. ``w1.4_mo``.
        seeds: number of runs averaged.
        epochs: the evaluated epochs (common to all seeds).
        top1: mean test top-1 in percent per epoch.
        sd_last: standard deviation over seeds of the final test top-1 (points; 0 for one seed).
        lr_last: learning rate at the final evaluated epoch.
    """

    experiment: str
    point: str
    seeds: int
    epochs: tuple[int, ...]
    top1: tuple[float, ...]
    sd_last: float
    lr_last: float

    def head_gain(self, head: int = 4) -> float:
        """``top1[head] - top1[0]`` in points: the gain over the first ``head`` epochs after the first."""
        return self.top1[min(head, len(self.top1) - 1)] - self.top1[0]

    def tail_gain(self, tail: int = 3) -> float:
        """``top1[-1] - top1[-1 - tail]`` in points (the whole curve when shorter)."""
        return self.top1[-1] - self.top1[max(0, len(self.top1) - 1 - tail)]


def mean_curves(path: str | Path) -> list[Curve]:
    """Average the curves of ``path`` over seeds, per ``(experiment, point)``, sorted by name.

    Runs whose epochs differ from the first run of their point are left out (a point whose
    runs were made with different schedules has no single mean curve).
    """
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for line in read_results(path):
        experiment, point = line["run"].split("/")[:2]
        groups[(experiment, point)].append(line)
    out = []
    for (experiment, point), runs in sorted(groups.items()):
        epochs = runs[0]["epoch"]
        runs = [r for r in runs if r["epoch"] == epochs]
        top1 = tuple(100 * statistics.fmean(r["test_top1"][i] for r in runs) for i in range(len(epochs)))
        last = [100 * r["test_top1"][-1] for r in runs]
        sd = statistics.stdev(last) if len(last) > 1 else 0.0
        out.append(Curve(experiment, point, len(runs), tuple(epochs), top1, sd, float(runs[0]["lr"][-1])))
    return out


def curves_markdown(path: str | Path, tail: int = 3) -> str:
    """One row per point: seeds, epochs, final mean top-1, its seed sd, the tail gain, final lr."""
    rows = [f"| experiment | point | seeds | epochs | final top-1 | sd over seeds | gain in epochs 1-{HEAD + 1} "
            f"| gain in last {tail} epochs | final lr |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in mean_curves(path):
        rows.append(f"| {c.experiment} | {c.point} | {c.seeds} | {c.epochs[-1]} | {c.top1[-1]:.2f} | {c.sd_last:.2f} "
                    f"| {c.head_gain(HEAD):+.2f} | {c.tail_gain(tail):+.2f} | {c.lr_last:.2g} |")
    return "\n".join(rows)


def plot_curves(path: str | Path, out: str | Path) -> Path:
    """Mean test top-1 against epoch, one panel per experiment, one line per point.

    Returns:
        The PNG path.

    Raises:
        ConfigError: ``path`` holds no curves.
    """
    from hbnn.errors import ConfigError
    from research.plots import pyplot, save_png

    curves = mean_curves(path)
    if not curves:
        raise ConfigError(f"no curves in {path}; run scripts/collect_curves.py after a sweep first")
    experiments = sorted({c.experiment for c in curves})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(experiments), figsize=(4.2 * len(experiments), 3.4), squeeze=False)
    for ax, name in zip(axes[0], experiments):
        for c in (c for c in curves if c.experiment == name):
            ax.plot(c.epochs, c.top1, marker=".", label=f"{c.point} (n={c.seeds})")
        ax.set(title=name, xlabel="epoch", ylabel="test top-1 (%), mean over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Test accuracy per epoch (cosine schedule to ~0)", fontsize=9)
    return save_png(fig, Path(out))
