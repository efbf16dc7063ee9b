"""Optuna studies for sweeps and tuning: storages with heartbeats, and what a study holds.

Storage URLs (``--storage``, else ``$BENCH_OPTUNA_STORAGE``, else beside the results store):

- any SQLAlchemy URL Optuna's ``RDBStorage`` takes: ``sqlite:///results/optuna.sqlite`` (the
  default when the results store is SQLite: the same folder, ``optuna.sqlite``),
  ``postgresql+psycopg://user@host/db`` (several machines; the default when the results store is
  a server database: the same database, whose Optuna tables do not clash with the store's);
- ``journal:///path/file.log``: Optuna's ``JournalStorage`` on a ``JournalFileBackend`` (a shared
  filesystem without a database server; ``journal://relative/path.log`` is relative).

Every storage records heartbeats of running trials (Optuna's own for RDB storages, timed by the
database's clock; a trial system attribute for journal files, whose Optuna storage has none). A
trial whose heartbeat is older than the grace period is failed by the next worker that looks
(``optuna.storages.fail_stale_trials``) and re-enqueued (at most ``MAX_RETRY`` times) by
``RetryHeartbeatStaleTrialCallback``. A claim is a heartbeat: RDB storages write the first one in
the claim's transaction, journal files count the claim time until the first beat, so a worker
killed between claiming and beating still leaves a trial that goes stale.

The heartbeat interval and grace are the study's (user attributes ``heartbeat_s``/``grace_s``, set
when it is created): every process that loads the study uses them, whatever its own flags, so a
worker with a short grace never fails a live trial of a worker that beats less often.

Creating a fresh storage and enqueueing are serialised across processes: a lock file beside a
SQLite or journal file, a PostgreSQL advisory lock on a server database.

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
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled  # since Optuna 2
from optuna.trial import FrozenTrial, TrialState

from bench.core import paths
from bench.core.errors import BenchError
from bench.core.urls import mask_password

STORAGE_ENV = "BENCH_OPTUNA_STORAGE"
HEARTBEAT_S = 60
HEARTBEAT_ATTR = "heartbeat_s"
GRACE_ATTR = "grace_s"
ENQUEUE_LOCK_KEY = 0x62656E6368  # PostgreSQL advisory lock id of enqueueing ("bench")
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
            if now - _last_beat(t, now) > self._grace_period
        ]

    def set_heartbeat(self, interval: int, grace: int) -> None:
        self._heartbeat_interval, self._grace_period = interval, grace

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self._stale_callback

    # Optuna < 4.9 asks for the callback under its old name.
    def get_failed_trial_callback(self) -> Any:
        return self._stale_callback


def _last_beat(trial: FrozenTrial, now: float) -> float:
    """A journal trial's last heartbeat; its claim (start) time before the first beat."""
    beat = trial.system_attrs.get(JOURNAL_HEARTBEAT_ATTR)
    if beat is not None:
        return float(beat)
    return trial.datetime_start.timestamp() if trial.datetime_start else now


class ClaimBeatingRDBStorage(RDBStorage):
    """Optuna's RDB storage whose claim (WAITING → RUNNING) writes the trial's first heartbeat in
    the same transaction: a worker killed right after claiming leaves a trial that goes stale."""

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state != TrialState.RUNNING or values is not None or self.heartbeat_interval is None:
            return super().set_trial_state_values(trial_id, state, values)
        from datetime import datetime

        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy.exc import IntegrityError

        try:
            with _create_scoped_session(self.scoped_session) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                self.check_trial_is_updatable(trial_id, trial.state)
                if trial.state != TrialState.WAITING:
                    return False
                trial.state = TrialState.RUNNING
                trial.datetime_start = datetime.now()
                if models.TrialHeartbeatModel.where_trial_id(trial_id, session) is None:
                    session.add(models.TrialHeartbeatModel(trial_id=trial_id))
        except IntegrityError:
            return False
        return True

    def set_heartbeat(self, interval: int, grace: int) -> None:
        self.heartbeat_interval, self.grace_period = interval, grace


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
    heartbeat: int | None = HEARTBEAT_S,
    grace: int | None = None,
    max_retry: int = MAX_RETRY,
    must_exist: bool = False,
) -> OpenedStorage:
    """The Optuna storage at ``url`` with heartbeats every ``heartbeat`` s (stale after ``grace``,
    default 2 × heartbeat) and stale trials retried up to ``max_retry`` times. ``must_exist``: a
    SQLite or journal file that does not exist yet is an error (instead of being created).
    A study loaded or created later brings its own heartbeat settings (``use_study_heartbeat``)."""
    heartbeat = heartbeat or HEARTBEAT_S
    if heartbeat < 1:
        raise BenchError("--heartbeat must be ≥ 1 second")
    path = local_file(url)
    if must_exist and path is not None and not path.is_file():
        raise BenchError(
            f"no study storage at {path} ({url}); start a sweep or tune there first, "
            "or pass the right --storage"
        )
    grace = grace or 2 * heartbeat
    callback = RetryAndNotify(max_retry)
    try:
        with _file_lock(path):  # two processes creating a fresh file: one at a time
            if url.startswith("journal:"):
                storage = _journal_storage(url, heartbeat, grace, callback)
            else:
                storage = _create_retrying(lambda: _rdb_storage(url, heartbeat, grace, callback))
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


def _create_retrying(create: Callable[[], RDBStorage], tries: int = 5) -> RDBStorage:
    """Creating Optuna's tables races with another process creating them on a server database
    ("already exists", a duplicate version row): the loser tries again and finds them."""
    from sqlalchemy.exc import SQLAlchemyError

    from bench.results.store import creation_race

    for attempt in range(tries):
        try:
            return create()
        except SQLAlchemyError as exc:
            if attempt == tries - 1 or not creation_race(exc):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive lock on ``<path>.bench-lock`` (released when the process dies; Optuna's journal
    backend uses ``<path>.lock`` itself); nothing for None."""
    if path is None:
        yield
        return
    import fcntl

    lock_path = path.with_name(path.name + ".bench-lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        if path.is_file():  # a read-only storage can still be read (bench status)
            yield
            return
        raise BenchError(
            f"cannot create the study storage {path}: folder {lock_path.parent} is not "
            f"writable ({exc.strerror})"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def storage_lock(opened: OpenedStorage) -> Iterator[None]:
    """Held while a process enqueues: one sweep at a time reads what is there and adds the rest.
    A lock file beside a SQLite or journal file; a PostgreSQL advisory lock on a server database
    (released when its connection ends, even if the process is killed)."""
    path = local_file(opened.url)
    storage = opened.storage
    if path is not None or not isinstance(storage, RDBStorage):
        with _file_lock(path):
            yield
        return
    if storage.engine.dialect.name != "postgresql":
        yield  # other servers: enqueue is made safe by the re-check in ``enqueue``
        return
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ENQUEUE_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ENQUEUE_LOCK_KEY})
            conn.commit()


def local_file(url: str) -> Path | None:
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
        storage = ClaimBeatingRDBStorage(
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


def load_study(
    opened: OpenedStorage,
    name: str,
    heartbeat: int | None = None,
    grace: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> optuna.Study:
    """The existing study ``name``, with its heartbeat settings in use (``heartbeat``/``grace``
    flags that differ are reported with ``warn``); BenchError naming the studies there otherwise."""
    try:
        # Sweep trials are enqueued, never sampled: the cheapest sampler keeps Trial() fast.
        study = optuna.load_study(
            study_name=name, storage=opened.storage, sampler=optuna.samplers.RandomSampler()
        )
    except KeyError:
        names = study_names(opened)
        raise BenchError(
            f"no study '{name}' in {opened.shown}"
            + (f"; studies there: {', '.join(names)}" if names else " (it holds no studies)")
            + ". Start one with `python -m bench sweep` (or `tune`), or pass the right --storage"
        ) from None
    use_study_heartbeat(study, opened, heartbeat, grace, warn)
    return study


def study_names(opened: OpenedStorage) -> list[str]:
    return [s.study_name for s in opened.storage.get_all_studies()]


def create_study(
    opened: OpenedStorage,
    name: str,
    heartbeat: int | None = None,
    grace: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> optuna.Study:
    """Create (or open) the study ``name``, maximising (validation mIoU). A new study records
    ``heartbeat``/``grace`` (default: the storage's); an existing one keeps its own."""
    with storage_lock(opened):
        study = optuna.create_study(
            study_name=name,
            storage=opened.storage,
            direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.RandomSampler(),
        )
        if HEARTBEAT_ATTR not in study.user_attrs:
            beat = heartbeat or heartbeat_interval(opened.storage) or HEARTBEAT_S
            study.set_user_attr(HEARTBEAT_ATTR, beat)
            study.set_user_attr(GRACE_ATTR, grace or 2 * beat)
            heartbeat = grace = None  # recorded: nothing to warn about
    use_study_heartbeat(study, opened, heartbeat, grace, warn)
    return study


def use_study_heartbeat(
    study: optuna.Study,
    opened: OpenedStorage,
    heartbeat: int | None = None,
    grace: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Adopt the study's heartbeat interval and grace (a study of an older version has none:
    the storage's stay). ``heartbeat``/``grace`` given that differ are reported with ``warn``."""
    beat, stored_grace = study.user_attrs.get(HEARTBEAT_ATTR), study.user_attrs.get(GRACE_ATTR)
    if beat is None:
        return
    storage = opened.storage
    if isinstance(storage, (ClaimBeatingRDBStorage, HeartbeatJournalStorage)):
        storage.set_heartbeat(int(beat), int(stored_grace or 2 * beat))
    ignored = [
        f"{flag} {given}"
        for flag, given, kept in (
            ("--heartbeat", heartbeat, beat),
            ("--grace", grace, stored_grace),
        )
        if given is not None and kept is not None and int(given) != int(kept)
    ]
    if ignored and warn is not None:
        warn(
            f"note: study '{study.study_name}' beats every {beat} s with {stored_grace} s grace "
            f"(set when it was created); {' and '.join(ignored)} ignored"
        )


def heartbeat_interval(storage: BaseStorage) -> int | None:
    return storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None


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


def heartbeat_ages(study: optuna.Study) -> dict[int, float]:
    """Seconds since each running trial's last heartbeat (trial number → age), by the storage's
    clock for database storages (the database's time) and the wall clock for journal files."""
    storage = study._storage
    if isinstance(storage, _CachedStorage):  # how Optuna wraps an RDB storage
        storage = storage._backend
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if isinstance(storage, HeartbeatJournalStorage):
        now = time.time()
        return {t.number: now - _last_beat(t, now) for t in running}
    if not isinstance(storage, RDBStorage) or not running:
        return {}
    from optuna.storages._rdb import models
    from sqlalchemy import func, select

    ids = {t._trial_id: t.number for t in running}
    beats = models.TrialHeartbeatModel.__table__
    with storage.engine.connect() as conn:
        now = conn.execute(select(func.current_timestamp())).scalar_one()
        rows = conn.execute(
            select(beats.c.trial_id, beats.c.heartbeat).where(beats.c.trial_id.in_(list(ids)))
        ).all()
    now = now.replace(tzinfo=None)
    return {ids[r.trial_id]: (now - r.heartbeat.replace(tzinfo=None)).total_seconds() for r in rows}


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
