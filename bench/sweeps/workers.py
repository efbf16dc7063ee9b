"""Workers: take waiting trials from a study's storage and run them; start local worker processes.

The queue is the Optuna study itself. A worker claims the oldest WAITING trial the way Optuna's
``Study.ask`` pops enqueued trials (``storage.set_trial_state_values(id, RUNNING)``, which only one
process can win), but never creates a new trial when none is waiting: it stops instead (after
waiting for running trials to finish or go stale, so a killed worker's trial is retried).
While a trial runs, a thread records its heartbeat; ``fail_stale_trials`` (called by every worker
before each claim) fails trials whose heartbeat stopped and the storage's retry callback
re-enqueues them.

This module imports neither torch nor the runner (the objective does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from bench.core.errors import BenchError
from bench.core.paths import PROJECT_ROOT
from bench.core.urls import mask_password
from bench.sweeps.studies import (
    HEARTBEAT_S,
    STORAGE_ENV,
    OpenedStorage,
    fail_stale,
    heartbeat_interval,
    is_heartbeat_enabled,
    load_study,
    open_storage,
)

Objective = Callable[[optuna.Trial], float]

STOP_SIGNALS = ("SIGTERM", "SIGUSR2")
"""SIGTERM: scancel, preemption, a job's end; SIGUSR2: SLURM's time-limit warning (submitit's)."""
EXIT_DONE, EXIT_GAVE_UP, EXIT_STOPPED = 0, 3, 4
"""Worker exit codes: nothing left to do; stopped after failures in a row; stopped by a signal."""


class StopRequested(BaseException):
    """Raised in the worker's main thread by a stop signal (not an error of the trial)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def handle_stop_signals() -> None:
    """On SIGTERM/SIGUSR2 raise ``StopRequested`` (replacing submitit's own handlers, which would
    fail the running trial as its own error or keep claiming during the kill grace)."""
    import signal

    received: list[str] = []

    def handler(signum: int, _frame: object) -> None:
        if not received:  # the first one stops the worker; a repeat must not break the cleanup
            received.append(signal.Signals(signum).name)
            raise StopRequested(received[0])

    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), handler)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(study: optuna.Study, opened: OpenedStorage) -> optuna.Trial | None:
    """The oldest waiting trial, now RUNNING and ours; None when nothing is waiting."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            won = opened.storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if won:
            return optuna.Trial(study, frozen._trial_id)
    return None


class Heartbeat:
    """Records the trial's heartbeat now and every interval until the block ends."""

    def __init__(self, opened: OpenedStorage, trial_id: int) -> None:
        self.storage = opened.storage
        self.trial_id = trial_id
        self.enabled = isinstance(self.storage, BaseHeartbeat) and is_heartbeat_enabled(
            self.storage
        )
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def beat(self) -> None:
        assert isinstance(self.storage, BaseHeartbeat)
        # a busy database must not kill the run; the next beat retries
        with contextlib.suppress(Exception):
            self.storage.record_heartbeat(self.trial_id)

    def loop(self) -> None:
        assert isinstance(self.storage, BaseHeartbeat)
        interval = self.storage.get_heartbeat_interval()
        while not self.stop.wait(interval):
            self.beat()

    def __enter__(self) -> Heartbeat:
        if self.enabled:
            self.beat()
            self.thread = threading.Thread(target=self.loop, daemon=True, name="heartbeat")
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


@dataclass
class WorkerReport:
    completed: int = 0
    failed: int = 0
    pruned: int = 0
    trials: list[int] = field(default_factory=list)
    gave_up: bool = False
    stopped_by: str | None = None

    @property
    def exit_code(self) -> int:
        if self.stopped_by:
            return EXIT_STOPPED
        return EXIT_GAVE_UP if self.gave_up else EXIT_DONE


def work(
    study: optuna.Study,
    opened: OpenedStorage,
    objective: Objective,
    *,
    wait: bool = True,
    poll: float = 5.0,
    max_trials: int | None = None,
    max_failures_in_a_row: int = 3,
    log: Callable[[str], None] = print,
) -> WorkerReport:
    """Run waiting trials until none is left (and, with ``wait``, none is running elsewhere).

    Each trial's outcome is told to the study: its value (COMPLETE), PRUNED on TrialPruned, FAIL
    with the error in user attribute ``error`` on any other exception. KeyboardInterrupt fails
    the trial and propagates. ``StopRequested`` (a stop signal, see ``handle_stop_signals``)
    fails the running trial as interrupted, enqueues its retry and ends the loop. After
    ``max_failures_in_a_row`` failures the worker gives up (it is probably misconfigured, e.g. a
    wrong data root) rather than failing every waiting trial.
    """
    report = WorkerReport()
    try:
        _work_loop(
            study, opened, objective, report, wait, poll, max_trials, max_failures_in_a_row, log
        )
    except StopRequested as stop:  # between trials: nothing claimed
        report.stopped_by = stop.signal_name
    if report.stopped_by:
        log(f"[{worker_id()}] stopped by {report.stopped_by}; claims no further trial")
    return report


def _work_loop(
    study: optuna.Study,
    opened: OpenedStorage,
    objective: Objective,
    report: WorkerReport,
    wait: bool,
    poll: float,
    max_trials: int | None,
    max_failures_in_a_row: int,
    log: Callable[[str], None],
) -> None:
    me = worker_id()
    in_a_row = 0
    while max_trials is None or len(report.trials) < max_trials:
        if max_failures_in_a_row and in_a_row >= max_failures_in_a_row:
            log(f"[{me}] giving up: {in_a_row} trials in a row failed (see their errors above)")
            report.gave_up = True
            break
        fail_stale(study)
        trial = claim(study, opened)
        if trial is None:
            if wait and study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)
            ):
                time.sleep(poll)
                continue
            break
        with Heartbeat(opened, trial._trial_id):  # from the claim on: a crash any later is seen
            try:
                trial.set_user_attr("worker", me)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # failed as stale between the claim and now; its retry is waiting
            report.trials.append(trial.number)
            label = trial.user_attrs.get("label", f"trial {trial.number}")
            log(f"[{me}] trial {trial.number}: {label}")
            started = time.time()
            value: float | None = None
            try:
                value = objective(trial)
                state = TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except KeyboardInterrupt:
                _tell(study, trial, TrialState.FAIL, None, "interrupted")
                raise
            except StopRequested as stop:
                _interrupted(study, opened, trial, stop.signal_name, me)
                report.stopped_by = stop.signal_name
                return
            except Exception as exc:  # recorded on the trial; the worker goes on
                _tell(study, trial, TrialState.FAIL, None, f"{type(exc).__name__}: {exc}")
                report.failed += 1
                in_a_row += 1
                log(
                    f"[{me}] trial {trial.number} failed ({time.time() - started:.0f} s): "
                    f"{type(exc).__name__}: {exc}"
                )
                continue
            _tell(study, trial, state, value, None)
        in_a_row = 0
        if state == TrialState.PRUNED:
            report.pruned += 1
            log(f"[{me}] trial {trial.number} pruned ({time.time() - started:.0f} s)")
        else:
            report.completed += 1
            log(
                f"[{me}] trial {trial.number} done: {_shown_value(trial, value)} "
                f"({time.time() - started:.0f} s)"
            )


def _shown_value(trial: optuna.Trial, value: float | None) -> str:
    """The trial's value named and in % when the objective named its metric (sweeps do)."""
    metric = trial.user_attrs.get("metric")
    if metric is None or value is None or not math.isfinite(value):
        return f"value {value}" if value is None else f"value {value:.4f}"
    return f"{metric} {100 * value:.1f} %"


def _interrupted(
    study: optuna.Study, opened: OpenedStorage, trial: optuna.Trial, why: str, me: str
) -> None:
    """A trial stopped by a signal: failed as interrupted (not for its own reasons) and
    re-enqueued at once, so another worker (or this task requeued) runs it again."""
    _tell(study, trial, TrialState.FAIL, None, f"interrupted: worker {me} got {why}; retried")
    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state == TrialState.FAIL:
        opened.callback(study, frozen)


def _tell(
    study: optuna.Study,
    trial: optuna.Trial,
    state: TrialState,
    value: float | None,
    error: str | None,
) -> None:
    try:
        if error is not None:
            trial.set_user_attr("error", error[-2000:])
        if state == TrialState.COMPLETE:
            study.tell(trial, value, skip_if_finished=True)
        else:
            study.tell(trial, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # another worker failed it as stale meanwhile; its retry settles the grid point


# --- Starting workers ------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalWorker:
    """One local worker process: extra environment (GPU pinning) and the --device it gets."""

    env: dict[str, str]
    device: str


def plan_local_workers(
    workers: int | None, per_gpu: int, device: str, gpus: list[str], cpus: int | None = None
) -> list[LocalWorker]:
    """One worker per GPU (× ``per_gpu``), each pinned with CUDA_VISIBLE_DEVICES, when ``device``
    is auto/cuda and GPUs exist; else ``workers`` (default 1) on ``device``. An explicit
    ``workers`` count is spread round-robin over the GPUs. Several CPU workers share the ``cpus``
    cores (default: all): each gets OMP_NUM_THREADS = cores ÷ workers unless the variable is set,
    since oversubscribed torch threads spin against each other."""
    if workers is not None and workers < 0:
        raise BenchError("--workers must be ≥ 0")
    if per_gpu < 1:
        raise BenchError("--workers-per-gpu must be ≥ 1")
    if gpus and device in ("auto", "cuda"):
        count = len(gpus) * per_gpu if workers is None else workers
        return [
            LocalWorker({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}, "cuda") for i in range(count)
        ]
    count = 1 if workers is None else workers
    env = {}
    if count > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (cpus or allotted_cpus()) // count))
    return [LocalWorker(dict(env), device) for _ in range(count)]


def allotted_cpus() -> int:
    """The CPUs this process may use: SLURM's ``SLURM_CPUS_PER_TASK``, else its CPU affinity."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_allotted_threads() -> int:
    """Set torch's thread count to ``$OMP_NUM_THREADS``, else the allotted CPUs; returns it."""
    import torch

    given = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(given) if given.isdigit() and int(given) > 0 else allotted_cpus()
    torch.set_num_threads(threads)
    return threads


def visible_gpus() -> list[str]:
    """The GPUs this machine lets us use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class WorkerOptions:
    """Everything a worker needs: the study, and this machine's run environment."""

    storage: str
    name: str
    store: str
    data_root: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    compile: str = "off"
    precision: str = "auto"
    heartbeat: int | None = None
    grace: int | None = None
    wait: bool = True
    max_trials: int | None = None

    def argv(self, urls: bool = True) -> list[str]:
        """``bench worker`` arguments for these options; without ``urls``, no --storage/--store
        (they travel in ``url_env()``, out of process titles)."""
        args = ["--storage", self.storage, "--store", self.store] if urls else []
        args += [
            "--name",
            self.name,
            "--device",
            self.device,
            "--compile",
            self.compile,
            "--precision",
            self.precision,
        ]
        for flag, value in (
            ("--heartbeat", self.heartbeat),
            ("--grace", self.grace),
            ("--data-root", self.data_root),
            ("--cache-dir", self.cache_dir),
            ("--max-trials", self.max_trials),
        ):
            if value is not None:
                args += [flag, str(value)]
        return args + ([] if self.wait else ["--no-wait"])

    def url_env(self) -> dict[str, str]:
        """The storage and store URLs as the environment variables ``bench worker`` reads."""
        return {STORAGE_ENV: self.storage, "BENCH_STORE": self.store}

    def shown_command(self) -> str:
        """A complete, copy-pasteable ``bench worker`` command; a URL holding a password is given
        as its environment variable (``$BENCH_OPTUNA_STORAGE``/``$BENCH_STORE``), never printed."""
        return shown_command(["worker", *self.argv(urls=False)], self.storage, self.store)


def shown_command(args: list[str], storage: str, store: str | None = None) -> str:
    """``python -m bench ARGS --storage URL [--store URL]`` as a shell line without passwords."""
    import shlex

    line = shlex.join(["python", "-m", "bench", *args])
    for flag, url, var in (("--storage", storage, STORAGE_ENV), ("--store", store, "BENCH_STORE")):
        if url is None:
            continue
        secret = mask_password(url) != url
        line += f' {flag} "${var}"' if secret else f" {flag} {shlex.quote(url)}"
    return line


def worker_command(opts: WorkerOptions) -> list[str]:
    """The local worker's command line: no URL in it (they are in ``opts.url_env()``)."""
    return [sys.executable, "-m", "bench", "worker", *opts.argv(urls=False)]


def start_local_workers(
    plan: list[LocalWorker], opts: WorkerOptions, log_dir: Path
) -> list[tuple[subprocess.Popen, Path]]:
    """Start ``python -m bench worker`` processes; each one's output goes to its log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for i, w in enumerate(plan):
        env = {**os.environ, **w.env, **opts.url_env(), "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
        )
        log_path = log_dir / f"worker-{i}.log"
        with open(log_path, "ab") as log_file:
            command = worker_command(dataclasses.replace(opts, device=w.device))
            proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        started.append((proc, log_path))
    return started


# --- One worker, in this process -----------------------------------------------------------------


def run_worker(
    study: optuna.Study,
    opened: OpenedStorage,
    opts: WorkerOptions,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    add_hook: bool = True,
) -> WorkerReport:
    """Work on ``study`` in this process with the run environment of ``opts``."""
    from bench.runner import make_env
    from bench.sweeps.sweep import interrupted_runs_hook, sweep_objective

    env = make_env(
        opts.data_root,
        opts.store,
        opts.device,
        opts.cache_dir,
        False,
        opts.compile,
        precision=opts.precision,
    )
    recorded = study.user_attrs.get("store")
    if recorded and recorded != mask_password(opts.store):
        warn(
            f"warning: the sweep stores results in {recorded}; this worker stores them in "
            f"{mask_password(opts.store)} (pass --store to change)"
        )
    if add_hook:
        assert env.store is not None
        opened.callback.hooks.append(interrupted_runs_hook(env.store))
    threads = use_allotted_threads()
    log(f"[{worker_id()}] {threads} CPU threads, device {env.device}")
    poll = min(5.0, float(heartbeat_interval(opened.storage) or HEARTBEAT_S))
    return work(
        study,
        opened,
        sweep_objective(env),
        wait=opts.wait,
        poll=poll,
        max_trials=opts.max_trials,
        log=log,
    )


def worker_main(
    opts: WorkerOptions, log: Callable[[str], None] = print, warn: Callable[[str], None] = print
) -> WorkerReport:
    """Open the study and work on it until nothing is left (``bench worker``, SLURM tasks)."""
    handle_stop_signals()
    opened = open_storage(opts.storage, opts.heartbeat, opts.grace, must_exist=True)
    study = load_study(opened, opts.name, opts.heartbeat, opts.grace, warn)
    report = run_worker(study, opened, opts, log, warn)
    how = (
        f"stopped by {report.stopped_by}"
        if report.stopped_by
        else "gave up"
        if report.gave_up
        else "done"
    )
    log(
        f"worker {how}: {report.completed} trials completed, {report.failed} failed "
        f"(study '{opts.name}' in {opened.shown}; exit code {report.exit_code})"
    )
    return report
