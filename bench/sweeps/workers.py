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
    OpenedStorage,
    fail_stale,
    is_heartbeat_enabled,
    load_study,
    open_storage,
)

Objective = Callable[[optuna.Trial], float]


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
    the trial and propagates. After ``max_failures_in_a_row`` failures the worker stops (it is
    probably misconfigured, e.g. a wrong data root) rather than failing every waiting trial.
    """
    report = WorkerReport()
    me = worker_id()
    in_a_row = 0
    while max_trials is None or len(report.trials) < max_trials:
        if max_failures_in_a_row and in_a_row >= max_failures_in_a_row:
            log(f"[{me}] stopping: {in_a_row} trials in a row failed (see their errors above)")
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
                f"[{me}] trial {trial.number} done: value {value:.4f} "
                f"({time.time() - started:.0f} s)"
            )
    return report


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
        env["OMP_NUM_THREADS"] = str(max(1, (cpus or os.cpu_count() or 1) // count))
    return [LocalWorker(dict(env), device) for _ in range(count)]


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
    heartbeat: int = HEARTBEAT_S
    grace: int | None = None
    wait: bool = True
    max_trials: int | None = None

    def argv(self, masked: bool = False) -> list[str]:
        """``bench worker`` arguments for these options (passwords hidden with ``masked``)."""
        shown = mask_password if masked else (lambda url: url)
        args = [
            "--storage",
            shown(self.storage),
            "--name",
            self.name,
            "--store",
            shown(self.store),
            "--device",
            self.device,
            "--compile",
            self.compile,
            "--precision",
            self.precision,
            "--heartbeat",
            str(self.heartbeat),
        ]
        for flag, value in (
            ("--grace", self.grace),
            ("--data-root", self.data_root),
            ("--cache-dir", self.cache_dir),
            ("--max-trials", self.max_trials),
        ):
            if value is not None:
                args += [flag, str(value)]
        return args + ([] if self.wait else ["--no-wait"])


def worker_command(opts: WorkerOptions) -> list[str]:
    return [sys.executable, "-m", "bench", "worker", *opts.argv()]


def start_local_workers(
    plan: list[LocalWorker], opts: WorkerOptions, log_dir: Path
) -> list[tuple[subprocess.Popen, Path]]:
    """Start ``python -m bench worker`` processes; each one's output goes to its log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for i, w in enumerate(plan):
        env = {**os.environ, **w.env, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
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
    poll = min(5.0, float(opts.heartbeat))
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
    opened = open_storage(opts.storage, opts.heartbeat, opts.grace, must_exist=True)
    study = load_study(opened, opts.name)
    report = run_worker(study, opened, opts, log, warn)
    log(
        f"worker done: {report.completed} trials completed, {report.failed} failed "
        f"(study '{opts.name}' in {opened.shown})"
    )
    return report
