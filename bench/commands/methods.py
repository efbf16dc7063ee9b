"""``bench methods``: the registered methods."""

from __future__ import annotations

import argparse
import dataclasses


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the registered methods", description=__doc__)
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also show each method's parameters"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.table import Table

    from bench.core.console import console
    from bench.ssl.registry import all_methods

    table = Table(title="Methods")
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("description")
    if args.verbose:
        table.add_column("parameters (defaults)")
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
        table.add_row(*row)
    console.print(table)
    return 0
