"""The README's main job: FP vs 1-bit vs 2-bit vs 1.4-bit HBNN on Fashion-MNIST.

``python -m research showcase --out runs/showcase`` (``make run``) trains the four recipes
``showcase/*.yaml`` found by :func:`hbnn.configs.find_config` (in the repository:
``src/hbnn/recipes/showcase/``; weights and activations binarized, as in the paper's Table 1), then
prints a table of test accuracy, realized average bits and stored model size, and writes
``showcase.json``, ``showcase.md`` and ``showcase.png`` into the output folder.
Finished runs are reused and interrupted ones resume, so the command can be re-run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run_showcase", "SHOWCASE_RUNS", "format_table"]

# (run name, recipe file, label): the order of the table and the plot.
SHOWCASE_RUNS = (
    ("fp", "fp.yaml", "FP / FP"),
    ("w2a2", "w2a2.yaml", "2 / 2"),
    ("w1.4a1.4", "w1.4a1.4.yaml", "1.4 / 1.4 HBNN (MO)"),
    ("w1a1", "w1a1.yaml", "1 / 1"),
)


def _train_one(name: str, recipe: Path, out: Path, overrides: list[str], quiet: bool) -> dict:
    """Train (or reuse / resume) one showcase run; returns its row of the table."""
    from hbnn.summary import summarize
    from hbnn.train import fit, load_config
    from hbnn.train.rebuild import model_from_checkpoint

    run_dir = out / name
    row_file = run_dir / "showcase_row.json"
    cfg = load_config(recipe, overrides)
    if row_file.is_file():
        row = json.loads(row_file.read_text())
        if row.get("overrides") == overrides:
            return row
    resume = (run_dir / "last.json").is_file()
    start = time.perf_counter()
    metrics = fit(cfg, run_dir, resume=resume, overwrite=run_dir.exists() and not resume, quiet=quiet)
    model, _ = model_from_checkpoint(run_dir, "last")
    totals = summarize(model)["model"]
    row = {
        "run": name,
        "top1": 100.0 * float(metrics["top1"]),  # percent
        "weight_bits": float(totals["avg_weight_bits"]),
        "act_bits": float(totals["avg_act_bits"]),
        "stored_kib": totals["stored_bytes"] / 1024,
        "fp32_kib": totals["fp32_bytes"] / 1024,
        "train_s": time.perf_counter() - start,
        "epochs": cfg.train.epochs,
        "seed": cfg.train.seed,
        "overrides": overrides,
    }
    from hbnn.io import atomic_write_json

    atomic_write_json(row_file, row)
    return row


def format_table(rows: list[dict]) -> str:
    """A markdown table of the showcase rows."""
    lines = [
        "| run (activations / weights) | test top-1 % | avg weight bits | avg act bits | stored KiB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        act = "32 (float)" if r["act_bits"] >= 32 else f"{r['act_bits']:.2f}"
        weight = "32 (float)" if r["weight_bits"] >= 32 else f"{r['weight_bits']:.3f}"
        lines.append(f"| {r['label']} | {r['top1']:.2f} | {weight} | {act} | {r['stored_kib']:.1f} |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    """Bar chart of accuracy with bits and size in the labels (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hbnn.io import atomic_open

    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"{r['label']}\n{r['stored_kib']:.0f} KiB" for r in rows]
    bars = ax.bar(labels, [r["top1"] for r in rows], color=["#555555", "#1f77b4", "#d62728", "#9ecae1"])
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['top1']:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    low = min(r["top1"] for r in rows)
    ax.set_ylim(max(0.0, low - 5), min(100.0, max(r["top1"] for r in rows) + 2))
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_title("cifar_fc4 (16-32-64), binarized weights and activations")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def run_showcase(out: str | Path, overrides: list[str] | None = None, quiet: bool = False) -> list[dict]:
    """Train the four showcase runs into ``out`` and write the table, JSON and plot there."""
    from hbnn.configs import find_config
    from hbnn.io import atomic_write_json, atomic_write_text

    out = Path(out)
    overrides = list(overrides or [])
    rows = []
    for name, recipe, label in SHOWCASE_RUNS:
        if not quiet:
            print(f"== showcase: {label} ({recipe})", flush=True)
        row = _train_one(name, find_config(recipe, "showcase"), out, overrides, quiet)
        rows.append(dict(row, label=label))
    table = format_table(rows)
    atomic_write_json(out / "showcase.json", rows)
    atomic_write_text(out / "showcase.md", table + "\n")
    _plot(rows, out / "showcase.png")
    print(table)
    print(f"wrote {out / 'showcase.json'}, {out / 'showcase.md'}, {out / 'showcase.png'}")
    return rows


def _cmd_showcase(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.data_dir is not None:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    run_showcase(args.out, overrides, quiet=args.quiet)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``showcase`` subcommand (``python -m research showcase``)."""
    p = subparsers.add_parser("showcase", help="FP vs 1/2/1.4-bit HBNN on Fashion-MNIST: table and plot")
    p.add_argument("--out", default="runs/showcase", help="output folder (default: runs/showcase)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the recipes', 2)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--data-dir", help="Fashion-MNIST folder (default: the Debian package's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value of every run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_showcase)
