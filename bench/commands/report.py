"""``bench report``: one self-contained HTML file with the leaderboard, figures and run metadata.

It opens offline (styles, figures and script are inline). With no succeeded runs matching the
filters it exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands._common import add_data_root
from bench.commands.leaderboard import add_filters, add_table_options, filters_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="a self-contained HTML report of the results", description=__doc__
    )
    add_filters(p)
    add_table_options(p)
    add_data_root(p)
    p.add_argument(
        "--out",
        type=Path,
        help="output file (default: report.html in the results folder, --results-dir)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.core.console import console
    from bench.core.paths import results_dir
    from bench.data.sources import resolve_data_root
    from bench.reporting.leaderboard import build_leaderboard
    from bench.reporting.plots import build_plots
    from bench.reporting.report import build_report, write_report
    from bench.reporting.reported import load_reported
    from bench.results.frames import load_results, require_runs
    from bench.results.store import ResultStore

    store = ResultStore(args.store)
    results = load_results(store, args.dataset, args.protocol, args.profile)
    require_runs(results, filters_text(args))
    board = build_leaderboard(
        results, load_reported(args.reported), args.baseline, args.aggregate_splits
    )
    every_protocol = load_results(store, args.dataset, None, args.profile)  # figures use honest
    plots = build_plots(
        every_protocol, resolve_data_root(args.data_root), args.baseline, args.aggregate_splits
    )
    out = args.out or results_dir() / "report.html"
    path = write_report(build_report(results, board, plots), out)
    console.print(f"wrote {path}", markup=False, highlight=False)
    return 0
