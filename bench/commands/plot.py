"""``bench plot``: figures of the stored results as PNG and SVG.

Score vs labeled images per method, per-class IoU heatmaps, test predictions beside the ground
truth, pretraining losses. With no succeeded runs matching the filters it exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.text import Text

from bench.commands._common import add_data_root
from bench.commands.leaderboard import add_filters, filters_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="figures of the results (PNG + SVG)", description=__doc__)
    add_filters(p)
    add_data_root(p)
    p.add_argument(
        "--baseline",
        help="method the forest plot's differences are taken from (default: imagenet, else "
        "scratch)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default: plots/ in the results folder, --results-dir)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.core.console import console
    from bench.core.paths import results_dir
    from bench.data.sources import resolve_data_root
    from bench.reporting.plots import build_plots, save_plots
    from bench.results.frames import load_results, require_runs
    from bench.results.store import ResultStore

    results = load_results(ResultStore(args.store), args.dataset, None, args.profile)
    require_runs(results, filters_text(args))
    plots = build_plots(
        results, resolve_data_root(args.data_root), args.baseline, args.aggregate_splits
    )
    for path in save_plots(plots, args.out or results_dir() / "plots"):
        console.print(f"wrote {path}", markup=False, highlight=False)
    for note in plots.notes:
        console.print(Text.assemble(("skipped:", "yellow"), f" {note}"), highlight=False)
    return 0
