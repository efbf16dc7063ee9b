"""``bench worker``: join a sweep from any machine: run its waiting grid points until none is left.

The worker takes trials from the study's storage (``--storage``, the URL the sweep printed), runs
each with ``run_one`` against this machine's data root, cache and device, and stores results in
``--store``; several workers (on one machine or many) share the work and never run the same trial
twice. A worker also waits for trials running elsewhere: if one's worker dies, its heartbeat stops
and the trial is failed and retried here.

On SIGTERM (scancel, preemption) or SIGUSR2 (SLURM's time-limit warning) the worker stops
claiming, fails its running trial as interrupted and enqueues its retry, then exits. Exit codes:
0 nothing left to do, 3 gave up after 3 trials in a row failed, 4 stopped by a signal.
"""

from __future__ import annotations

import argparse

from bench.commands._common import add_worker_env


def add_study_options(
    parser: argparse.ArgumentParser, name_required: bool = False, heartbeat: bool = True
) -> None:
    """``--storage``, ``--name`` and the heartbeat settings (sweep, worker, status, tune)."""
    parser.add_argument(
        "--storage",
        help="Optuna storage URL: sqlite:///..., postgresql+psycopg://..., "
        "journal:///shared/file.log (default: $BENCH_OPTUNA_STORAGE, else optuna.sqlite "
        "beside a SQLite results store, else the results store's database)",
    )
    parser.add_argument("--name", required=name_required, help="study name")
    if heartbeat:
        parser.add_argument(
            "--heartbeat",
            type=int,
            metavar="S",
            help="seconds between a running trial's heartbeats (default: 60); set when the "
            "study is created, after which every worker uses the study's",
        )
        parser.add_argument(
            "--grace",
            type=int,
            metavar="S",
            help="a running trial without heartbeat for this long is failed and retried "
            "(default: 2 × heartbeat); set when the study is created, like --heartbeat",
        )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="join a sweep: run its waiting grid points (any machine)",
        description=__doc__,
    )
    add_study_options(p, name_required=True)
    add_worker_env(p)
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="exit as soon as nothing is waiting (default: also wait for trials running elsewhere)",
    )
    p.add_argument("--max-trials", type=int, help="stop after this many trials")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.sweeps.workers import worker_main

    report = worker_main(worker_options(args), log=plain_line, warn=plain_warning)
    return report.exit_code


def worker_options(args: argparse.Namespace, **changes: object):
    """The ``WorkerOptions`` of ``bench worker`` / ``bench sweep`` arguments."""
    from bench.results.store import default_store_url
    from bench.sweeps.studies import default_storage_url
    from bench.sweeps.workers import WorkerOptions

    store = args.store or default_store_url()
    values = {
        "storage": args.storage or default_storage_url(store),
        "name": args.name,
        "store": store,
        "data_root": args.data_root,
        "cache_dir": args.cache_dir,
        "device": args.device,
        "compile": args.compile,
        "precision": args.precision,
        "heartbeat": args.heartbeat,
        "grace": args.grace,
        "wait": not getattr(args, "no_wait", False),
        "max_trials": getattr(args, "max_trials", None),
    }
    return WorkerOptions(**{**values, **changes})


def plain_line(line: str) -> None:
    from bench.core.console import console

    console.print(line, highlight=False, markup=False, soft_wrap=True)


def plain_warning(line: str) -> None:
    from bench.core.console import err_console

    err_console.print(line, style="yellow", highlight=False, markup=False, soft_wrap=True)
