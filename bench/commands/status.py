"""``bench status``: how far a sweep (or a tuning study) is: done, running, waiting, failed.

For a sweep, each grid point counts once, in the state of its latest trial (a retried point counts
as its retry); ``retried attempts`` counts the superseded ones. ``--watch`` refreshes the view until
nothing is waiting or running. Without ``--name``: every study in the storage.
"""

from __future__ import annotations

import argparse
import time

from bench.commands._common import add_store
from bench.commands.worker import add_study_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="progress of a sweep or tuning study (done/running/failed/waiting)",
        description=__doc__,
    )
    add_study_options(p, heartbeat=False)
    add_store(p)
    p.add_argument(
        "--watch", action="store_true", help="refresh every few seconds until it is finished"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.live import Live
    from rich.table import Table

    from bench.core.console import console
    from bench.sweeps.studies import (
        count_study,
        default_storage_url,
        load_study,
        open_storage,
        status_renderable,
        study_names,
    )

    opened = open_storage(args.storage or default_storage_url(args.store), must_exist=True)
    if not args.name:
        names = study_names(opened)
        if not names:
            console.print(f"no studies in {opened.shown}", highlight=False)
            return 0
        table = Table(title=f"Studies in {opened.shown}")
        for col in ("study", "kind", "done", "running", "waiting", "failed", "pruned", "total"):
            table.add_column(col, justify="left" if col in ("study", "kind") else "right")
        for name in names:
            c = count_study(load_study(opened, name))
            table.add_row(
                name,
                c.kind,
                *(str(v) for v in (c.done, c.running, c.waiting, c.failed, c.pruned, c.total)),
            )
        console.print(table)
        return 0
    study = load_study(opened, args.name)
    counts = count_study(study)
    if not args.watch or counts.finished:
        console.print(status_renderable(args.name, counts, opened.shown))
        return 0
    with Live(
        status_renderable(args.name, counts, opened.shown), console=console, refresh_per_second=1
    ) as live:
        while not counts.finished:
            time.sleep(3.0)
            counts = count_study(study)
            live.update(status_renderable(args.name, counts, opened.shown))
    return 0
