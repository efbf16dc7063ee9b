"""``bench sweep``: the grid (methods × datasets × shots × draws) as one Optuna study, for workers.

Each grid point becomes an enqueued trial of the study ``--name`` (default ``sweep-<profile>``) in
``--storage``; workers take waiting trials and run each with ``run``'s pipeline. Re-running the same
command enqueues only what is missing (failed grid points again) and skips results already in the
store. Grid points with more shots than a dataset's pool are skipped with a note.

Workers: ``--workers N`` local processes (default: one per GPU × ``--workers-per-gpu``, each pinned
with CUDA_VISIBLE_DEVICES; one on CPU, which runs in this process); ``--workers 0`` only enqueues
(start workers with the printed ``bench worker`` command on any machine); ``--launcher slurm``
submits N workers as a SLURM job array (submitit) and follows its tasks until they end (pending
reasons, failed tasks with their first error line; ``--detach`` returns at once).
``bench status --name NAME --storage URL`` shows progress.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.markup import escape

from bench.commands._common import (
    add_params_source,
    add_run_options,
    finetune_overrides,
    parse_params,
)
from bench.commands.worker import add_study_options, plain_line, plain_warning, worker_options
from bench.core.errors import BenchError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="the full grid as one Optuna study, run by local, remote or SLURM workers",
        description=__doc__,
    )
    p.add_argument(
        "--methods", default="all", help="comma list of methods, or 'all' (default: all)"
    )
    p.add_argument(
        "--datasets", default="metaldam", help="comma list of dataset cards (default: metaldam)"
    )
    p.add_argument(
        "--shots", default="1", help="comma list of shots levels, e.g. 1,2,4,8,all (default: 1)"
    )
    p.add_argument("--draws", type=int, default=1, help="seeded draws per shots level (default: 1)")
    add_run_options(p)
    add_params_source(p)
    add_study_options(p)
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes (default: one per GPU × --workers-per-gpu, else 1 in this "
        "process); 0: only enqueue",
    )
    p.add_argument(
        "--workers-per-gpu", type=int, default=1, help="workers sharing each GPU (default: 1)"
    )
    p.add_argument(
        "--log-dir", help="local workers' logs (default: logs/<name> beside the results store)"
    )
    p.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        default="local",
        help="local processes, or a SLURM job array of --workers workers (default: local)",
    )
    slurm = p.add_argument_group("SLURM (with --launcher slurm)")
    slurm.add_argument(
        "--slurm-time",
        type=int,
        default=24 * 60,
        metavar="MIN",
        help="time limit per worker in minutes (default: 1440)",
    )
    slurm.add_argument(
        "--slurm-gpus",
        type=int,
        help="GPUs per array task, one worker on each (default: 1 with --device cuda, else 0)",
    )
    slurm.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per worker (default: 8)")
    slurm.add_argument("--slurm-mem-gb", type=float, help="memory per worker in GB")
    slurm.add_argument("--slurm-partition", help="partition")
    slurm.add_argument("--slurm-account", help="account")
    slurm.add_argument("--slurm-qos", help="quality of service")
    slurm.add_argument(
        "--slurm-setup",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line run before each worker, e.g. 'module load cuda' (repeatable)",
    )
    slurm.add_argument(
        "--slurm-allow-sqlite",
        action="store_true",
        help="let SLURM workers use a SQLite study storage or store (only safe when every "
        "task runs on this machine's filesystem; refused otherwise)",
    )
    slurm.add_argument(
        "--detach",
        action="store_true",
        help="return once the array is submitted (default: follow its tasks until they end)",
    )
    slurm.add_argument(
        "--slurm-folder",
        help="submitit folder for scripts and logs "
        "(default: slurm/<name> beside the results store)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.core.console import console, err_console
    from bench.core.urls import mask_password
    from bench.results.store import ResultStore, default_store_url
    from bench.sweeps.studies import (
        count_study,
        create_study,
        default_storage_url,
        fail_stale,
        open_storage,
        results_dir,
        status_renderable,
    )
    from bench.sweeps.sweep import (
        Grid,
        enqueue,
        expand_grid,
        expand_methods,
        interrupted_runs_hook,
        split_list,
        split_params,
    )
    from bench.sweeps.tune import resolve_params, tuned_key

    store_url = absolute_url(args.store or default_store_url())
    methods, datasets = expand_methods(args.methods), split_list(args.datasets)
    if not datasets:
        raise BenchError("--datasets names no dataset")
    per_method, param_notes = split_params(methods, parse_params(args.param))
    shots_levels = split_list(args.shots)
    if args.params and len(shots_levels) != 1:
        raise BenchError(
            "--params: tuned parameters are per shots level; sweep one --shots level at a time"
        )

    def tuned(m: str, d: str) -> dict:
        key = tuned_key(
            m,
            d,
            args.profile,
            split=args.split,
            shots=shots_levels[0] if shots_levels else "1",
            init=args.init,
            finetune=finetune_overrides(args),
        )
        found = resolve_params(key, per_method[m], args.params, store_url)
        return {**{f"finetune.{k}": v for k, v in found.finetune.items()}, **found.params}

    params = {(m, d): tuned(m, d) for m in methods for d in datasets}
    grid = Grid(
        methods=methods,
        datasets=datasets,
        shots=split_list(args.shots),
        draws=args.draws,
        profile=args.profile,
        init=args.init,
        split=args.split,
        seed=args.seed,
        params=params,
        finetune=finetune_overrides(args),
    )
    specs, notes = expand_grid(grid, args.data_root)
    for note in param_notes + notes:
        err_console.print(f"[yellow]{escape(note)}[/]", highlight=False)
    if not specs:
        raise BenchError("the grid is empty: every shots level is larger than its dataset's pool")

    name = args.name or f"sweep-{args.profile}"
    storage_url = absolute_url(args.storage or default_storage_url(store_url))
    if args.launcher == "slurm":
        _refuse_sqlite(args, storage_url, store_url)
    opened = open_storage(storage_url, args.heartbeat, args.grace)
    opened.callback.hooks.append(interrupted_runs_hook(ResultStore(store_url)))
    study = create_study(opened, name, args.heartbeat, args.grace, warn=plain_warning)
    study.set_user_attr("kind", "sweep")
    study.set_user_attr("store", mask_password(store_url))
    fail_stale(study)
    report = enqueue(study, specs, opened)
    console.print(
        f"sweep '{name}' ({opened.shown}): {len(specs)} grid points — {report.added} enqueued"
        + (f" ({report.retried} failed before, retried)" if report.retried else "")
        + f", {report.done} done, {report.pending} already waiting or running",
        markup=False,
        highlight=False,
    )

    opts = worker_options(
        args,
        storage=storage_url,
        name=name,
        store=store_url,
        data_root=_absolute(args.data_root),
        cache_dir=_absolute(args.cache_dir),
    )

    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        console.print(status_renderable(name, count_study(study), opened.shown))
        return 0 if report.done == len(specs) else 1
    if args.launcher == "slurm":
        return _slurm(args, study, opts, results_dir(store_url))
    if args.workers == 0:
        console.print(
            f"no local workers (--workers 0). Start workers on any machine with:\n"
            f"  {opts.shown_command()}\nand follow progress with:\n  {_status_command(opts)}"
            + _secret_note(opts),
            highlight=False,
            soft_wrap=True,
        )
        return 0

    from bench.sweeps.workers import plan_local_workers, visible_gpus

    gpus = visible_gpus() if args.device in ("auto", "cuda") else []
    plan = plan_local_workers(args.workers, args.workers_per_gpu, args.device, gpus)
    if len(plan) == 1 and not plan[0].env:
        from bench.sweeps.workers import handle_stop_signals, run_worker

        handle_stop_signals()
        run_worker(
            study, opened, opts, log=plain_line, warn=plain_warning, add_hook=False
        )  # the hook is in place
    else:
        log_dir = Path(args.log_dir) if args.log_dir else results_dir(store_url) / "logs" / name
        _run_local(study, opened.shown, plan, opts, log_dir)
    counts = count_study(study)
    console.print(status_renderable(name, counts, opened.shown))
    if counts.done < counts.total:
        err_console.print(
            f"{counts.total - counts.done} grid points not done; re-run the same command "
            "to retry them (done ones are skipped)"
        )
        return 1
    return 0


def _run_local(study, shown: str, plan, opts, log_dir: Path) -> None:
    """Start the local worker processes and show the study live until they exit."""
    from rich.live import Live

    from bench.core.console import err_console
    from bench.sweeps.studies import count_study, status_renderable
    from bench.sweeps.workers import start_local_workers

    name = opts.name
    procs = start_local_workers(plan, opts, log_dir)
    pinned = [w.env.get("CUDA_VISIBLE_DEVICES") for w in plan]
    err_console.print(
        f"{len(procs)} local workers"
        + (f" on GPUs {', '.join(p for p in pinned if p)}" if any(pinned) else "")
        + f"; logs in {log_dir}",
        highlight=False,
    )
    try:
        with Live(
            status_renderable(name, count_study(study), shown),
            console=err_console,
            refresh_per_second=1,
            transient=True,
        ) as live:
            while any(proc.poll() is None for proc, _ in procs):
                time.sleep(2.0)
                live.update(status_renderable(name, count_study(study), shown))
    except KeyboardInterrupt:
        _stop(procs)
        raise
    for i, (proc, log) in enumerate(procs):
        if proc.returncode:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            err_console.print(
                f"[red]worker {i} exited with status {proc.returncode}[/]; end of "
                + escape(f"{log}:\n" + "\n".join(tail)),
                highlight=False,
            )


def _stop(procs) -> None:
    """Ctrl-C: workers got SIGINT too (same process group) and fail their trial; wait, then kill."""
    deadline = time.time() + 30
    for proc, _ in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except Exception:
            proc.kill()


def absolute_url(url: str) -> str:
    """A SQLite or journal URL with its file made absolute (so workers anywhere find it)."""
    from bench.sweeps.studies import local_file

    path = local_file(url)
    if path is None or path.is_absolute():
        return url
    if url.startswith("journal:"):
        return f"journal://{path.resolve()}"
    return f"sqlite:///{path.resolve()}"


def _absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _status_command(opts) -> str:
    from bench.sweeps.workers import shown_command

    return shown_command(["status", "--name", opts.name], opts.storage)


def _secret_note(opts) -> str:
    from bench.core.urls import mask_password

    secret = [
        var
        for var, url in (("BENCH_OPTUNA_STORAGE", opts.storage), ("BENCH_STORE", opts.store))
        if mask_password(url) != url
    ]
    if not secret:
        return ""
    return f"\n(set {' and '.join(secret)} to the URLs with their password; they are not printed)"


def _refuse_sqlite(args: argparse.Namespace, storage: str, store: str) -> None:
    """SLURM workers on other nodes cannot share a SQLite file safely: refuse unless forced."""
    if args.slurm_allow_sqlite:
        return
    for what, flag, url in (
        ("study storage", "--storage", storage),
        ("results store", "--store", store),
    ):
        if url.startswith("sqlite"):
            raise BenchError(
                f"the {what} is SQLite ({url}): SLURM workers on other nodes cannot share it "
                "(SQLite's locking is unreliable on network filesystems). Pass a shared "
                f"{flag} (postgresql+psycopg://...; for the study also journal:///shared/f.log), "
                "or --slurm-allow-sqlite when every task runs on this machine"
            )


def _slurm(args: argparse.Namespace, study, opts, results: Path) -> int:
    from bench.core.console import console
    from bench.sweeps.slurm import SlurmSettings, submit_slurm

    folder = Path(args.slurm_folder) if args.slurm_folder else results / "slurm" / opts.name
    gpus = args.slurm_gpus if args.slurm_gpus is not None else int(args.device == "cuda")
    settings = SlurmSettings(
        folder=folder.resolve(),
        workers=args.workers if args.workers is not None else 1,
        time_min=args.slurm_time,
        gpus_per_task=gpus,
        cpus_per_task=args.slurm_cpus,
        mem_gb=args.slurm_mem_gb,
        partition=args.slurm_partition,
        account=args.slurm_account,
        qos=args.slurm_qos,
        setup=tuple(args.slurm_setup),
        job_name=f"bench-{opts.name}",
    )
    jobs = submit_slurm(settings, opts)
    job_id = jobs[0].job_id.split("_")[0]
    study.set_user_attr(
        "slurm", {"job": job_id, "folder": str(settings.folder), "tasks": len(jobs)}
    )
    console.print(
        f"submitted {len(jobs)} SLURM workers: job {job_id} (logs in {settings.folder})\n"
        f"follow with: {_status_command(opts)}" + _secret_note(opts),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if args.detach:
        return 0
    return follow(study, job_id, settings.folder, len(jobs))


def follow(study, job_id: str, folder: Path, tasks: int, poll: float = 5.0) -> int:
    """Report each array task's state as it changes until every task has ended; 0 when every
    grid point is done, else 1 (failed tasks named with the first error line of their log)."""
    from bench.core.console import console, err_console
    from bench.sweeps.slurm import TaskState, describe_task, scheduler_states
    from bench.sweeps.studies import count_study, status_renderable

    shown: dict[int, str] = {}
    unseen_since = time.time()
    while True:
        states = scheduler_states(job_id)
        for index in range(tasks):
            task = states.get(index, TaskState(index, "UNKNOWN"))
            line = describe_task(folder, job_id, task)
            if shown.get(index) != line:
                shown[index] = line
                (err_console if "FAILED" in line or "will not" in line else console).print(
                    line, highlight=False, markup=False, soft_wrap=True
                )
        if states:
            unseen_since = time.time()
        ended = len(states) == tasks and all(t.ended for t in states.values())
        lost = not states and time.time() - unseen_since > 60  # the scheduler forgot the job
        stuck = [t for t in states.values() if not t.ended and not t.stuck]
        if states and not stuck and not ended:
            err_console.print(
                f"every unfinished task of job {job_id} is pending for a reason that will not "
                f"clear; cancel it with `scancel {job_id}`, change the option and re-run",
                highlight=False,
            )
            return 1
        if ended or lost:
            break
        time.sleep(poll)
    counts = count_study(study)
    console.print(status_renderable(study.study_name, counts, ""))
    if counts.done < counts.total:
        err_console.print(
            f"all workers ended with {counts.total - counts.done} grid points not done; "
            "re-run the same command to retry them",
            highlight=False,
        )
        return 1
    return 0
