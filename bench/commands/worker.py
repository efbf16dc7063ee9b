"""``bench worker``: join a sweep from any machine: run its waiting grid points until none is left.

The worker takes trials from the study's storage (``--storage``, the URL the sweep printed), runs
each with ``run_one`` against this machine's data root, cache and device, and stores results in
``--store``; several workers (on one machine or many) share the work and never run the same trial
twice. A worker also waits for trials running elsewhere: if one's worker dies, its heartbeat stops
and the trial is failed and retried here.
"""

from __future__ import annotations

import argparse

from bench.commands._common import add_worker_env


def add_study_options(parser: argparse.ArgumentParser, name_required: bool = False,
                      heartbeat: bool = True) -> None:
    """``--storage``, ``--name`` and the heartbeat settings (shared by sweep, worker, status, tune)."""
    parser.add_argument("--storage", help="Optuna storage URL: sqlite:///..., postgresql+psycopg://..., "
                        "journal:///shared/file.log (default: $BENCH_OPTUNA_STORAGE, else optuna.sqlite "
                        "beside a SQLite results store, else the results store's database)")
    parser.add_argument("--name", required=name_required, help="study name")
    if heartbeat:
        parser.add_argument("--heartbeat", type=int, default=60, metavar="S",
                            help="seconds between a running trial's heartbeats (default: 60)")
        parser.add_argument("--grace", type=int, metavar="S",
                            help="a running trial without heartbeat for this long is failed and retried "
                                 "(default: 2 × heartbeat)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="join a sweep: run its waiting grid points (any machine)",
                       description=__doc__)
    add_study_options(p, name_required=True)
    add_worker_env(p)
    p.add_argument("--no-wait", action="store_true",
                   help="exit as soon as nothing is waiting (default: also wait for trials running elsewhere)")
    p.add_argument("--max-trials", type=int, help="stop after this many trials")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.console import console
    from bench.store import default_store_url
    from bench.studies import default_storage_url, load_study, open_storage

    store_url = args.store or default_store_url()
    opened = open_storage(args.storage or default_storage_url(store_url), args.heartbeat, args.grace,
                          must_exist=True)
    study = load_study(opened, args.name)
    report = run_worker(study, opened, args, store_url, wait=not args.no_wait,
                        max_trials=args.max_trials)
    console.print(f"worker done: {report.completed} trials completed, {report.failed} failed "
                  f"(study '{args.name}' in {opened.shown})")
    return 0


def run_worker(study, opened, args: argparse.Namespace, store_url: str, wait: bool = True,
               max_trials: int | None = None, add_hook: bool = True):
    """Work on ``study`` in this process with the run environment from ``args``."""
    from bench.console import console, err_console
    from bench.runner import make_env
    from bench.studies import masked
    from bench.sweep import interrupted_runs_hook, sweep_objective
    from bench.workers import work

    env = make_env(args.data_root, store_url, args.device, args.cache_dir, False, args.compile)
    recorded = study.user_attrs.get("store")
    if recorded and recorded != masked(store_url):
        err_console.print(f"[yellow]warning:[/] the sweep stores results in {recorded}; this worker "
                          f"stores them in {masked(store_url)} (pass --store to change)")
    if add_hook:
        opened.callback.hooks.append(interrupted_runs_hook(env.store))
    poll = min(5.0, float(args.heartbeat))
    return work(study, opened, sweep_objective(env), wait=wait, poll=poll, max_trials=max_trials,
                log=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
