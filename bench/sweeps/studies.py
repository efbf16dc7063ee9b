"""Optuna studies for sweeps and tuning: storages with heartbeats, and what a study holds.

Storage URLs (``--storage``, else ``$BENCH_OPTUNA_STORAGE``, else beside the results store):

- any SQLAlchemy URL Optuna's ``RDBStorage`` takes: ``sqlite:///results/optuna.sqlite`` (the
  default when the results store is SQLite: the same folder, ``optuna.sqlite``),
  ``postgresql+psycopg://user@host/db`` (several machines; the default when the results store is
  a server database: the same database, whose Optuna tables do not clash with the store's);
- ``journal:///path/file.log``: Optuna's ``JournalStorage`` on a ``JournalFileBackend`` (a shared
  filesystem without a database server; ``journal://relative/path.log`` is relative).

Every storage records heartbeats of running trials (Optuna's own for RDB storages; a trial system
attribute for journal files, whose Optuna storage has none). A trial whose heartbeat is older than
the grace period is failed by the next worker that looks (``optuna.storages.fail_stale_trials``)
and re-enqueued (at most ``MAX_RETRY`` times) by ``RetryHeartbeatStaleTrialCallback``.

SQLite: Optuna claims a waiting trial with ``SELECT ... FOR UPDATE`` then ``UPDATE``, which is
atomic on PostgreSQL but not with Python's sqlite3 driver (it begins a transaction only at the
first write, so two processes can both read WAITING and both claim). ``open_storage`` therefore
makes every SQLite transaction ``BEGIN IMMEDIATE`` (one writer at a time, readers wait up to a
minute) and switches the file to WAL mode.

This module imports neither torch nor the runner: ``bench status`` and the worker loop stay light.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled  # since Optuna 2
from optuna.trial import FrozenTrial, TrialState

from bench.core import paths
from bench.core.errors import BenchError
from bench.core.urls import mask_password

STORAGE_ENV = "BENCH_OPTUNA_STORAGE"
HEARTBEAT_S = 60
MAX_RETRY = 3
JOURNAL_HEARTBEAT_ATTR = "bench:heartbeat"
SQLITE_TIMEOUT_S = 60

StaleHook = Callable[[optuna.Study, FrozenTrial], None]

optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextmanager
def quiet_experimental() -> Iterator[None]:
    """Heartbeats and stale-trial retries are 'experimental' in Optuna; we use them knowingly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def results_dir(store_url: str | None) -> Path:
    """The folder beside the results store: its SQLite file's folder, else the results folder."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from bench.results.store import default_store_url

    try:
        url = make_url(store_url or default_store_url())
    except ArgumentError:
        return paths.results_dir()
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).parent
    return paths.results_dir()


def default_storage_url(store_url: str | None) -> str:
    """``$BENCH_OPTUNA_STORAGE``, else ``optuna.sqlite`` beside a SQLite store, else the store."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    from bench.results.store import default_store_url

    url = store_url or default_store_url()
    if url.startswith("sqlite"):
        return f"sqlite:///{results_dir(url) / 'optuna.sqlite'}"
    return url


class RetryAndNotify:
    """The stale-trial callback: run ``hooks`` (e.g. mark the results-store row interrupted), then
    re-enqueue the trial (at most ``max_retry`` times) with Optuna's retry callback."""

    def __init__(self, max_retry: int = MAX_RETRY) -> None:
        with quiet_experimental():
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.hooks: list[StaleHook] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        for hook in self.hooks:
            try:
                hook(study, trial)
            except Exception as exc:  # a cleanup problem must not lose the retry
                warnings.warn(
                    f"stale-trial hook failed for trial {trial.number}: {exc}", stacklevel=2
                )
        with quiet_experimental():
            self.retry(study, trial)


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage plus heartbeats as a trial system attribute (wall clock)."""

    def __init__(
        self,
        backend: Any,
        heartbeat_interval: int,
        grace_period: int,
        callback: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        super().__init__(backend)
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_callback = callback

    def record_heartbeat(self, trial_id: int) -> None:
        # failed as stale meanwhile (or finished): nothing to keep alive
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, JOURNAL_HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [
            t._trial_id
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if now - t.system_attrs.get(JOURNAL_HEARTBEAT_ATTR, now) > self._grace_period
        ]

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self._stale_callback

    # Optuna < 4.9 asks for the callback under its old name.
    def get_failed_trial_callback(self) -> Any:
        return self._stale_callback


@dataclass
class OpenedStorage:
    """A storage plus the retry callback whose hooks a worker extends."""

    url: str
    storage: BaseStorage
    callback: RetryAndNotify = field(default_factory=RetryAndNotify)

    @property
    def shown(self) -> str:
        return mask_password(self.url)


def open_storage(
    url: str,
    heartbeat: int = HEARTBEAT_S,
    grace: int | None = None,
    max_retry: int = MAX_RETRY,
    must_exist: bool = False,
) -> OpenedStorage:
    """The Optuna storage at ``url`` with heartbeats every ``heartbeat`` s (stale after ``grace``,
    default 2 × heartbeat) and stale trials retried up to ``max_retry`` times. ``must_exist``: a
    SQLite or journal file that does not exist yet is an error (instead of being created)."""
    if heartbeat < 1:
        raise BenchError("--heartbeat must be ≥ 1 second")
    path = _local_file(url)
    if must_exist and path is not None and not path.is_file():
        raise BenchError(
            f"no study storage at {path} ({url}); start a sweep or tune there first, "
            "or pass the right --storage"
        )
    grace = grace or 2 * heartbeat
    callback = RetryAndNotify(max_retry)
    try:
        if url.startswith("journal:"):
            storage = _journal_storage(url, heartbeat, grace, callback)
        else:
            storage = _rdb_storage(url, heartbeat, grace, callback)
    except BenchError:
        raise
    except ImportError as exc:
        raise BenchError(
            f"cannot open study storage {mask_password(url)}: database driver missing "
            f"({exc}); for PostgreSQL use a postgresql+psycopg:// URL"
        ) from exc
    except Exception as exc:  # sqlalchemy ArgumentError/OperationalError, OSError...
        reason = getattr(exc, "orig", None) or exc
        raise BenchError(f"cannot open study storage {mask_password(url)}: {reason}") from exc
    return OpenedStorage(url, storage, callback)


def _local_file(url: str) -> Path | None:
    """The file behind a SQLite or journal URL (None for server databases and in-memory SQLite)."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:").removeprefix("//"))
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


def _rdb_storage(url: str, heartbeat: int, grace: int, callback: RetryAndNotify) -> RDBStorage:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {}
    if sqlite:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit at the driver level; _serialize_sqlite emits BEGIN IMMEDIATE itself.
        kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S, "isolation_level": None}}
    with quiet_experimental():
        storage = RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=heartbeat,
            grace_period=grace,
            heartbeat_stale_trial_callback=callback,
        )
    if sqlite:
        _serialize_sqlite(storage.engine)
    return storage


def _serialize_sqlite(engine: Any) -> None:
    """Every transaction takes SQLite's write lock up front, so read-then-update is atomic."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()  # connections opened before the listeners existed


def _journal_storage(url: str, heartbeat: int, grace: int, callback: RetryAndNotify) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    path = url.removeprefix("journal:").removeprefix("//")
    if not path:
        raise BenchError(
            f"journal storage URL '{url}' names no file; e.g. journal:///shared/sweep.log"
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(path)
    return HeartbeatJournalStorage(backend, heartbeat, grace, callback)


def load_study(opened: OpenedStorage, name: str) -> optuna.Study:
    """The existing study ``name``; BenchError naming the studies there otherwise."""
    try:
        # Sweep trials are enqueued, never sampled: the cheapest sampler keeps Trial() fast.
        return optuna.load_study(
            study_name=name, storage=opened.storage, sampler=optuna.samplers.RandomSampler()
        )
    except KeyError:
        names = study_names(opened)
        raise BenchError(
            f"no study '{name}' in {opened.shown}"
            + (f"; studies there: {', '.join(names)}" if names else " (it holds no studies)")
            + ". Start one with `python -m bench sweep` (or `tune`), or pass the right --storage"
        ) from None


def study_names(opened: OpenedStorage) -> list[str]:
    return [s.study_name for s in opened.storage.get_all_studies()]


def create_study(opened: OpenedStorage, name: str) -> optuna.Study:
    """Create (or open) the study ``name``, maximising (validation mIoU)."""
    return optuna.create_study(
        study_name=name,
        storage=opened.storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(),
    )


def fail_stale(study: optuna.Study) -> None:
    """Fail trials whose worker stopped beating (and re-enqueue them), if heartbeats are on."""
    if is_heartbeat_enabled(study._storage):
        with quiet_experimental():
            optuna.storages.fail_stale_trials(study)


# --- What a study holds ----------------------------------------------------------------------

GRID_KEY = "grid_key"
LABEL = "label"


@dataclass
class StudyCounts:
    """Grid points (sweeps) or trials (tuning) by state; ``retried`` counts superseded attempts."""

    kind: str
    done: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0
    pruned: int = 0
    retried: int = 0
    running_labels: list[str] = field(default_factory=list)
    failed_labels: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.done + self.running + self.waiting + self.failed + self.pruned

    @property
    def finished(self) -> bool:
        return self.running == 0 and self.waiting == 0


def count_study(study: optuna.Study) -> StudyCounts:
    """For a sweep, the state of each grid point's latest trial; for tuning, every trial's."""
    trials = study.get_trials(deepcopy=False)
    sweep = study.user_attrs.get("kind") == "sweep" or any(GRID_KEY in t.user_attrs for t in trials)
    counts = StudyCounts("sweep" if sweep else "tune")
    if sweep:
        latest: dict[str, FrozenTrial] = {}
        for t in trials:
            key = t.user_attrs.get(GRID_KEY)
            if key is None:
                continue
            if key in latest:
                counts.retried += 1
            if key not in latest or t.number > latest[key].number:
                latest[key] = t
        chosen = list(latest.values())
    else:
        chosen = list(trials)
    states = Counter(t.state for t in chosen)
    counts.done = states[TrialState.COMPLETE]
    counts.running = states[TrialState.RUNNING]
    counts.waiting = states[TrialState.WAITING]
    counts.failed = states[TrialState.FAIL]
    counts.pruned = states[TrialState.PRUNED]
    for t in chosen:
        label = trial_label(t)
        if t.state == TrialState.RUNNING:
            worker = t.user_attrs.get("worker")
            counts.running_labels.append(f"{label} [{worker}]" if worker else label)
        elif t.state == TrialState.FAIL:
            error = t.user_attrs.get("error")
            counts.failed_labels.append((f"{label}: {error}" if error else label)[:300])
    return counts


def trial_label(trial: FrozenTrial) -> str:
    return trial.user_attrs.get(LABEL) or f"trial {trial.number}"


def status_renderable(
    name: str, counts: StudyCounts, shown_storage: str, show_lists: bool = True
) -> Any:
    """A rich panel: counts, a progress bar, and what is running or failed."""
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    unit = "grid points" if counts.kind == "sweep" else "trials"
    table = Table.grid(padding=(0, 2))
    table.add_row(
        "[green]done",
        str(counts.done),
        "[cyan]running",
        str(counts.running),
        "[yellow]waiting",
        str(counts.waiting),
        "[red]failed",
        str(counts.failed),
        *(("[magenta]pruned", str(counts.pruned)) if counts.kind == "tune" else ()),
        "retried attempts",
        str(counts.retried),
    )
    total = max(counts.total, 1)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=total, completed=counts.done + counts.pruned, width=50),
        f"{counts.done + counts.pruned}/{counts.total} {unit}"
        f" ({100 * (counts.done + counts.pruned) / total:.0f}%)",
    )
    parts: list[Any] = [table, bar]
    if show_lists:
        parts += [f"[cyan]running:[/] {escape(label)}" for label in counts.running_labels[:20]]
        parts += [f"[red]failed:[/] {escape(label)}" for label in counts.failed_labels[:20]]
        hidden = max(0, len(counts.failed_labels) - 20) + max(0, len(counts.running_labels) - 20)
        if hidden:
            parts.append(f"[dim]… and {hidden} more[/]")
    return Panel(
        Group(*parts),
        title=escape(f"study '{name}'"),
        subtitle=escape(shown_storage),
        subtitle_align="right",
        expand=False,
    )
