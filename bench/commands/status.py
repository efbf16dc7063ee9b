"""``bench status``: how far a sweep (or a tuning study) is: done, running, waiting, failed.

For a sweep, each grid point counts once, in the state of its latest trial (a retried point counts
as its retry); ``retried attempts`` counts the superseded ones. ``--watch`` refreshes the view until
nothing is waiting or running. Without ``--name``: every study in the storage.

With ``--name``, each running trial's worker is listed with the age of its last heartbeat (by
the storage's clock; older than the grace means the worker is gone and the trial will be
retried), and for workers submitted to SLURM each array task's scheduler state (``sacct`` /
``squeue`` where available): pending with its reason, or failed with the first error line of
its log.
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


def worker_lines(study) -> list[str]:
    """Per-worker liveness from the heartbeats, then the SLURM tasks' states."""
    from pathlib import Path

    from optuna.trial import TrialState

    from bench.sweeps.slurm import describe_task, scheduler_states
    from bench.sweeps.studies import GRACE_ATTR, heartbeat_ages, trial_label

    lines = []
    ages = heartbeat_ages(study)
    grace = study.user_attrs.get(GRACE_ATTR)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        age = ages.get(t.number)
        beat = "no heartbeat yet" if age is None else f"last heartbeat {age:.0f} s ago"
        if age is not None and grace is not None and age > grace:
            beat += f" (over the {grace} s grace: worker gone, the trial will be retried)"
        lines.append(f"worker {t.user_attrs.get('worker', '?')}: {trial_label(t)}, {beat}")
    slurm = study.user_attrs.get("slurm")
    if slurm:
        job, folder, tasks = slurm["job"], Path(slurm["folder"]), int(slurm["tasks"])
        states = scheduler_states(job)
        if not states:
            lines.append(f"SLURM job {job}: no state from sacct/squeue (logs in {folder})")
        for index in range(tasks):
            task = states.get(index)
            if task is not None:
                lines.append(f"SLURM job {job} " + describe_task(folder, job, task))
    return lines


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
            console.print(f"no studies in {opened.shown}", markup=False, highlight=False)
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
        for line in worker_lines(study):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return 0
    with Live(
        status_renderable(args.name, counts, opened.shown), console=console, refresh_per_second=1
    ) as live:
        while not counts.finished:
            time.sleep(3.0)
            counts = count_study(study)
            live.update(status_renderable(args.name, counts, opened.shown))
    return 0
