"""``bench data list|fetch|check``: dataset cards, downloads and verification of a prepared root."""

from __future__ import annotations

import argparse

from bench.commands._common import add_data_root


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list, fetch or check datasets", description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="the dataset cards and whether their data is present")
    add_data_root(ls)
    ls.set_defaults(func=list_main)
    fetch = actions.add_parser("fetch", help="download the upstream files, verify and convert them")
    fetch.add_argument("name", help="dataset card name")
    fetch.add_argument("--base-url", help="fetch from this mirror instead of the upstream hosts")
    add_data_root(fetch)
    fetch.set_defaults(func=fetch_main)
    check = actions.add_parser("check", help="verify a prepared dataset and report what is wrong")
    check.add_argument("name", help="dataset card name")
    add_data_root(check)
    check.set_defaults(func=check_main)


def list_main(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    from bench.core.console import console
    from bench.core.errors import BenchError
    from bench.data.cards import available_cards, load_card
    from bench.data.sources import resolve_data_root, source_for

    root = resolve_data_root(args.data_root)
    table = Table(title=Text(f"Datasets (data root: {root})"))
    for col in ("name", "title", "classes", "splits", "variants", "present"):
        table.add_column(col)
    broken = 0
    for name in available_cards():
        try:
            card = load_card(name)
        except BenchError as exc:
            broken += 1
            table.add_row(Text(name), Text(f"broken: {exc}", style="red"), "", "", "", "–")
            continue
        table.add_row(
            *map(
                Text,
                (
                    name,
                    card.title,
                    ", ".join(card.class_names),
                    ", ".join(card.splits) or "–",
                    ", ".join(card.raw.get("variants", {})) or "–",
                    source_for(card, root).presence(),
                ),
            )
        )
    console.print(table)
    return 1 if broken else 0


def fetch_main(args: argparse.Namespace) -> int:
    from bench.core.console import say
    from bench.data.cards import load_card
    from bench.data.fetch import fetch_dataset
    from bench.data.sources import resolve_data_root

    target = fetch_dataset(
        load_card(args.name), resolve_data_root(args.data_root), base_url=args.base_url
    )
    say("[green]fetched[/] {} into {}", args.name, target)
    return 0


def check_main(args: argparse.Namespace) -> int:
    from bench.core.console import console, say
    from bench.data.cards import load_card
    from bench.data.check import check_dataset, neardup_report
    from bench.data.sources import resolve_data_root

    card, root = load_card(args.name), resolve_data_root(args.data_root)
    problems = check_dataset(card, root)
    if not problems:
        lines, problems = neardup_report(card, root)
        for line in lines:
            console.print(line, markup=False, highlight=False)
    for problem in problems:
        say("[red]✗[/] {}", problem)
    if problems:
        say("{} problem(s) in {}", len(problems), args.name)
        return 1
    say("[green]✓[/] {}: all files present and consistent", args.name)
    return 0
