"""``bench methods``: the registered methods."""

from __future__ import annotations

import argparse
import dataclasses


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the registered methods", description=__doc__)
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show each method's parameters and what `bench tune` searches",
    )
    p.add_argument("--profile", default="quick", help="profile of the search spaces shown")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from bench.core.console import console
    from bench.ssl.registry import all_methods
    from bench.sweeps.tune import describe_space, tune_space

    table = Table(title="Methods")
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("description")
    if args.verbose:
        table.add_column("parameters (defaults)")
        table.add_column(f"search space (bench tune, {args.profile} profile)")
    order = {"supervised": 0, "ssl": 1}
    for cls in sorted(all_methods(), key=lambda c: order.get(c.kind, 2)):
        row = [cls.name, cls.kind, cls.description]
        if args.verbose:
            row.append(
                ", ".join(
                    f"{f.name}={getattr(cls.Params(), f.name)}"
                    for f in dataclasses.fields(cls.Params)
                )
                or "–"
            )
            row.append(describe_space(tune_space(cls, args.profile)))
        table.add_row(*map(escape, row))
    console.print(table)
    return 0
