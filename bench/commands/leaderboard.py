"""``bench leaderboard``: methods × shots tables with statistics, as Markdown, CSV and LaTeX.

One section per dataset, split, SSL pool mode, protocol and profile; fine-tune and probe side by
side. With no succeeded runs matching the filters it prints an error and exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands._common import add_store


def add_filters(parser: argparse.ArgumentParser) -> None:
    """--store, --dataset and --profile: which runs to read (leaderboard, plot, report)."""
    add_store(parser)
    parser.add_argument(
        "--dataset", help="only this dataset (full name, e.g. metaldam or ebc1:binary)"
    )
    parser.add_argument(
        "--profile", help="only runs of this profile (default: every profile, each apart)"
    )
    parser.add_argument(
        "--aggregate-splits",
        action="store_true",
        help="combine every split of a dataset in one section (n = splits x draws, paired "
        "within each split); default: each split apart",
    )


def add_table_options(parser: argparse.ArgumentParser) -> None:
    """--protocol, --baseline and --reported (shared by leaderboard and report)."""
    parser.add_argument(
        "--protocol",
        help="only this protocol: honest, matssl-paper, "
        "pscl-paper... (default: every stored protocol)",
    )
    parser.add_argument(
        "--baseline",
        help="method (or row label) the others are compared with (default: imagenet, else scratch)",
    )
    parser.add_argument(
        "--reported",
        type=Path,
        help="numbers from the literature (default: results/reported.csv in the project)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="tables of results with statistics (md, csv, tex + terminal)",
        description=__doc__,
    )
    add_filters(p)
    add_table_options(p)
    p.add_argument(
        "--out", type=Path, help="output folder (default: the results folder, --results-dir)"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.core.console import console
    from bench.core.paths import results_dir
    from bench.reporting.leaderboard import build_leaderboard, print_leaderboard, write_leaderboard
    from bench.reporting.reported import load_reported
    from bench.results.frames import load_results, require_runs
    from bench.results.store import ResultStore

    results = load_results(ResultStore(args.store), args.dataset, args.protocol, args.profile)
    require_runs(results, filters_text(args))
    board = build_leaderboard(
        results, load_reported(args.reported), args.baseline, args.aggregate_splits
    )
    print_leaderboard(board)
    for path in write_leaderboard(board, args.out or results_dir()):
        console.print(f"wrote {path}", markup=False, highlight=False)
    return 0


def filters_text(args: argparse.Namespace) -> str:
    """' matching dataset=…, profile=…' for the filters given (empty if none)."""
    names = ("dataset", "protocol", "profile")
    given = [f"{n}={getattr(args, n)}" for n in names if getattr(args, n, None)]
    return f" matching {', '.join(given)}" if given else ""
