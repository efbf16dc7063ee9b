"""The results store: one row per run in ``runs``, its numbers in ``metrics`` (SQLAlchemy Core).

Any SQLAlchemy URL works (``BENCH_STORE``; default ``bench.sqlite`` in the results folder,
``bench.core.paths``). The schema
uses portable types only: JSON as ``sqlalchemy.JSON``, timestamps timezone-aware UTC.

A run's life: ``start_run`` inserts it as 'running'; ``finish_run`` writes its metrics and marks it
'succeeded' in one transaction, or ``fail_run`` marks it 'failed'. At most one run per
``config_hash`` is 'succeeded': ``finish_run`` checks, and a unique index on ``success_key`` (set to
the config hash only while succeeded; NULLs never collide) makes it hold under concurrent writers.
``finish_run(..., replace=True)`` (``--force``) marks the earlier success 'superseded' in the
transaction that records the new one.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator

from bench.core.errors import BenchError
from bench.core.paths import default_store_url
from bench.core.provenance import collect_versions, git_commit
from bench.core.urls import mask_password

if TYPE_CHECKING:  # pandas loads with the first frame: a run never needs it
    import pandas as pd

OPEN_STATUSES = ("running", "failed")  # a run in these states may still finish or fail


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value} given; use timezone-aware UTC")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


metadata_obj = MetaData()

runs_table = Table(
    "runs",
    metadata_obj,
    Column("id", Integer, primary_key=True),
    Column("config_hash", String(64), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("method", String(255), nullable=False),
    Column("dataset", String(255), nullable=False),
    Column("split", String(255), nullable=False),
    Column("shots", Integer, nullable=False),
    Column("shots_label", String(16), nullable=False),
    Column("draw", Integer, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("profile", String(255), nullable=False),
    Column("init", String(255), nullable=False),
    Column("encoder", String(255), nullable=False),
    Column("arch", String(255), nullable=False),
    Column("config", JSON, nullable=False),
    Column("images", JSON, nullable=False),
    Column("pretrain_hash", String(64)),
    Column("versions", JSON, nullable=False),
    Column("device", String(255), nullable=False),
    Column("git_commit", String(64)),
    Column("host", String(255), nullable=False),
    Column("pid", Integer),  # the process running it: a 'running' row whose process is gone
    Column("pool", String(32), nullable=False),
    Column("summary", JSON(none_as_null=True)),
    Column("success_key", String(64), unique=True),  # = config_hash while succeeded, else NULL
)

metrics_table = Table(
    "metrics",
    metadata_obj,
    Column("id", Integer, primary_key=True),
    Column(
        "run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("protocol", String(64), nullable=False),
    Column("selection", String(16), nullable=False),
    Column("split_part", String(16), nullable=False),
    Column("metric", String(32), nullable=False),
    Column("class_id", Integer),
    Column("value", Float),
    Column("mode", String(16), nullable=False),
)


@dataclass(frozen=True)
class NewRun:
    """What ``start_run`` records; provenance fields default to this process's environment.

    ``config_hash`` is normally ``config_hash(config)``.
    """

    config_hash: str
    method: str
    dataset: str
    split: str
    shots: int
    shots_label: str
    draw: int
    seed: int
    profile: str
    init: str
    encoder: str
    arch: str
    config: dict[str, Any]
    images: list[str]
    device: str
    pretrain_hash: str | None = None
    pool: str = "honest"
    """The SSL pool mode: ``honest`` (near-duplicates of evaluation images excluded) or
    ``transductive`` (the seeds' practice, an explicit opt-in)."""
    versions: dict[str, str | None] = field(default_factory=lambda: collect_versions())
    git_commit: str | None = field(default_factory=lambda: git_commit())
    host: str = field(default_factory=socket.gethostname)
    pid: int | None = field(default_factory=os.getpid)


@dataclass(frozen=True, kw_only=True)
class RunRecord(NewRun):
    """One row of ``runs`` as read back: what was started plus what the store added."""

    id: int
    status: str
    error: str | None
    started_at: datetime
    ended_at: datetime | None
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class MetricRow:
    """One number of a run; ``class_id`` set for per-class rows, NaN ``value`` stored as NULL."""

    protocol: str
    selection: str  # 'val' (model selected on validation) or 'oracle' (best on test)
    split_part: str  # 'test' or 'val'
    metric: str
    value: float
    class_id: int | None = None
    mode: str = "finetune"  # the evaluation mode: 'finetune' (every weight) or 'probe' (frozen)


RUN_FIELDS = tuple(f.name for f in fields(RunRecord))
METRIC_FIELDS = tuple(f.name for f in fields(MetricRow))
FRAME_RUN_COLUMNS = (
    "run_id", "config_hash", "method", "dataset", "split", "shots", "shots_label", "draw",
    "profile", "init", "encoder", "arch", "pool",
)  # fmt: skip


class DuplicateResult(BenchError):
    """Another run with the same config hash already succeeded; this one was marked failed."""

    def __init__(self, run_id: int, existing_id: int, config_hash: str) -> None:
        super().__init__(
            f"run {run_id} duplicates run {existing_id} (config {config_hash}), which already "
            "succeeded; it was marked failed. Rerun with --force to replace the earlier result."
        )
        self.run_id = run_id
        self.existing_id = existing_id
        self.config_hash = config_hash


class ResultStore:
    """Runs and metrics in the database at ``url`` (default: ``default_store_url()``)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_store_url()
        self.engine = _connect(self.url)

    def start_run(self, record: NewRun) -> int:
        """Insert ``record`` as a 'running' run; return its id."""
        values = {**asdict(record), "status": "running", "started_at": _now()}
        try:
            with self.engine.begin() as conn:
                key = conn.execute(insert(runs_table).values(values)).inserted_primary_key
        except SQLAlchemyError as exc:
            raise BenchError(_unwritable(self.url, exc)) from exc
        assert key is not None
        return int(key[0])

    def finish_run(
        self,
        run_id: int,
        metrics: list[MetricRow],
        summary: dict[str, Any],
        replace: bool = False,
    ) -> None:
        """Write the metrics and mark the run succeeded, in one transaction.

        A run with the same config hash that already succeeded makes this one fail with
        DuplicateResult, unless ``replace`` (``--force``): then the earlier success is marked
        'superseded' in the same transaction, so a redo that fails or is interrupted before this
        point leaves the earlier result in place.
        """
        config_hash = self._open_run_hash(run_id)
        try:
            with self.engine.begin() as conn:
                existing = _succeeded_id(conn, config_hash)
                if replace and existing is not None:
                    conn.execute(_supersede(config_hash))
                    existing = None
                if existing is None:
                    _write_success(conn, run_id, config_hash, metrics, summary)
                    return
        except IntegrityError:  # a concurrent writer succeeded first: the unique success_key
            existing = self._succeeded_id(config_hash)
            if existing is None:
                raise
        self.fail_run(run_id, f"duplicate of run {existing}")
        raise DuplicateResult(run_id, existing, config_hash)

    def fail_run(self, run_id: int, error: str) -> None:
        """Mark a running (or failed) run failed with ``error``; no effect on a finished run."""
        stmt = (
            update(runs_table)
            .where(runs_table.c.id == run_id, runs_table.c.status.in_(OPEN_STATUSES))
            .values(status="failed", error=error, ended_at=_now())
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def succeeded(self, config_hash: str) -> RunRecord | None:
        """The succeeded run with this config hash, if any."""
        found = self.runs(config_hash=config_hash, status="succeeded")
        return found[0] if found else None

    def runs(self, **filters: Any) -> list[RunRecord]:
        """Runs of any status, by id.

        Filters are ``column=value``; a list/tuple/set value means any of, None means no filter.
        """
        columns = {name: runs_table.c[name] for name in RUN_FIELDS}
        stmt = (
            select(*columns.values())
            .where(*_conditions(columns, filters))
            .order_by(runs_table.c.id)
        )
        with self.engine.connect() as conn:
            return [RunRecord(**row._mapping) for row in conn.execute(stmt)]

    def runs_frame(self, **filters: Any) -> pd.DataFrame:
        """``runs(**filters)`` as a DataFrame, one row per run."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.runs(**filters)], columns=list(RUN_FIELDS))

    def metrics_frame(self, status: str | None = "succeeded", **filters: Any) -> pd.DataFrame:
        """One row per metric row, with its run's identifying columns.

        Filters name run columns (``run_id`` for the run's id) or metric columns; ``status=None``
        includes runs of every status.
        """
        columns = {
            **{name: runs_table.c[name] for name in RUN_FIELDS if name != "id"},
            "run_id": runs_table.c.id,
            **{name: metrics_table.c[name] for name in METRIC_FIELDS},
        }
        shown = [*FRAME_RUN_COLUMNS, *METRIC_FIELDS]
        stmt = (
            select(*(columns[name].label(name) for name in shown))
            .join_from(metrics_table, runs_table)
            .where(*_conditions(columns, {**filters, "status": status}))
            .order_by(metrics_table.c.id)
        )
        import pandas as pd

        with self.engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(stmt).all(), columns=shown)
        return frame.astype({"class_id": "Int64", "value": "float64"})

    def mark_stale_running(self, older_than: timedelta) -> int:
        """Mark runs started over ``older_than`` ago, still running, failed ('interrupted')."""
        now = _now()
        stmt = (
            update(runs_table)
            .where(runs_table.c.status == "running", runs_table.c.started_at < now - older_than)
            .values(status="failed", error="interrupted", ended_at=now)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def fail_gone_runs(self, host: str | None = None) -> int:
        """Mark failed the 'running' runs of this host (or ``host``) whose process is gone (killed,
        the machine rebooted); returns how many. Runs of other hosts are left alone."""
        host = host or socket.gethostname()
        stmt = select(runs_table.c.id, runs_table.c.pid, runs_table.c.started_at).where(
            runs_table.c.status == "running",
            runs_table.c.host == host,
            runs_table.c.pid.is_not(None),
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        gone = [r for r in rows if not _process_alive(int(r.pid), r.started_at)]
        for r in gone:
            self.fail_run(r.id, f"interrupted: its process {r.pid} on {host} is gone")
        return len(gone)

    def _open_run_hash(self, run_id: int) -> str:
        columns = runs_table.c.config_hash, runs_table.c.status
        stmt = select(*columns).where(runs_table.c.id == run_id)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise ValueError(f"no run {run_id} in the store")
        if row.status not in OPEN_STATUSES:
            raise ValueError(f"run {run_id} is {row.status}; only running or failed runs finish")
        return row.config_hash

    def _succeeded_id(self, config_hash: str) -> int | None:
        with self.engine.connect() as conn:
            return _succeeded_id(conn, config_hash)


def _process_alive(pid: int, since: datetime) -> bool:
    """Whether process ``pid`` of this machine exists and started before ``since`` (a newer
    process with a reused pid is not the one that started the run)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return True  # no /proc: trust the pid
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return started <= since.timestamp() + 2.0


def creation_race(exc: Exception) -> bool:
    """Whether ``exc`` says another process created the same table (or type) just before us."""
    return isinstance(exc, IntegrityError) or "already exists" in str(exc)


def _unwritable(url: str, exc: Exception, verb: str = "write") -> str:
    """One line for a store that cannot be written, naming the folder of a SQLite file."""
    reason = getattr(exc, "orig", None) or exc
    try:
        parsed = make_url(url)
    except SQLAlchemyError:
        return f"cannot {verb} results store {mask_password(url)}: {reason}"
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        folder = Path(parsed.database).resolve().parent
        if not os.access(folder, os.W_OK) or not os.access(parsed.database, os.W_OK):
            return (
                f"cannot {verb} results store {mask_password(url)}: folder {folder} (or the "
                f"file) is not writable ({reason}); pass a writable --store"
            )
    return f"cannot {verb} results store {mask_password(url)}: {reason}"


def _connect(url: str) -> Engine:
    """An engine for ``url`` with the tables created; BenchError (password masked) on failure."""
    shown = mask_password(url)
    try:
        engine = _create_engine(url)
        _create_tables(engine)
        _check_schema(engine, shown)
    except ImportError as exc:
        raise BenchError(
            f"cannot open results store {shown}: database driver missing ({exc}); for PostgreSQL "
            "with psycopg 3 use a postgresql+psycopg:// URL"
        ) from exc
    except SQLAlchemyError as exc:
        raise BenchError(_unwritable(url, exc, "open")) from exc
    except OSError as exc:
        where = f": folder {exc.filename} is not writable" if exc.filename else ""
        raise BenchError(f"cannot open results store {shown}{where} ({exc.strerror})") from exc
    return engine


def _create_tables(engine: Engine, tries: int = 5) -> None:
    """Create missing tables (another process creating them at the same moment is retried) and
    add the ``pid`` column to a store that predates it (it identifies no result)."""
    for attempt in range(tries):
        try:
            metadata_obj.create_all(engine)
            break
        except SQLAlchemyError as exc:
            if attempt == tries - 1 or not creation_race(exc):
                raise
            time.sleep(0.2 * (attempt + 1))
    have = {c["name"] for c in inspect(engine).get_columns("runs")}
    if "pid" not in have:
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN pid INTEGER")
        except SQLAlchemyError:  # added by another process meanwhile
            if "pid" not in {c["name"] for c in inspect(engine).get_columns("runs")}:
                raise


def _check_schema(engine: Engine, shown: str) -> None:
    """A store written by an older version lacks columns: say so instead of failing later."""
    found = inspect(engine)
    for table in (runs_table, metrics_table):
        have = {c["name"] for c in found.get_columns(table.name)}
        missing = sorted(set(table.c.keys()) - have)
        if missing:
            raise BenchError(
                f"results store {shown} was written by an older microssl-bench: table "
                f"'{table.name}' lacks column(s) {', '.join(missing)}. Use a new --store (or "
                "move the old file aside); results are not mixed across schema versions"
            )


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, json_serializer=_json_dumps)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, json_serializer=_json_dumps, connect_args={"timeout": 30})
    event.listen(engine, "connect", _enable_sqlite_foreign_keys)
    return engine


def _enable_sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _json_dumps(value: Any) -> str:
    """JSON with non-finite floats as null (PostgreSQL rejects NaN in JSON)."""
    return json.dumps(_finite(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _conditions(columns: dict[str, Any], filters: dict[str, Any]) -> list[Any]:
    """WHERE clauses: ``name=value`` is equality, a list/tuple/set any of, None no filter."""
    clauses = []
    for name, value in filters.items():
        if value is None:
            continue
        if name not in columns:
            raise BenchError(f"unknown filter '{name}'; choose from {', '.join(sorted(columns))}")
        column = columns[name]
        many = isinstance(value, (list, tuple, set, frozenset))
        clauses.append(column.in_(list(value)) if many else column == value)
    return clauses


def _supersede(config_hash: str) -> Any:
    return (
        update(runs_table)
        .where(runs_table.c.config_hash == config_hash, runs_table.c.status == "succeeded")
        .values(status="superseded", success_key=None)
    )


def _succeeded_id(conn: Connection, config_hash: str) -> int | None:
    stmt = select(runs_table.c.id).where(
        runs_table.c.config_hash == config_hash, runs_table.c.status == "succeeded"
    )
    return conn.execute(stmt).scalar()


def _write_success(
    conn: Connection,
    run_id: int,
    config_hash: str,
    metrics: list[MetricRow],
    summary: dict[str, Any],
) -> None:
    rows = [{**asdict(m), "run_id": run_id, "value": _nullable(m.value)} for m in metrics]
    if rows:
        conn.execute(insert(metrics_table), rows)
    conn.execute(
        update(runs_table)
        .where(runs_table.c.id == run_id)
        .values(
            status="succeeded",
            error=None,
            ended_at=_now(),
            summary=summary,
            success_key=config_hash,
        )
    )


def _nullable(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _now() -> datetime:
    return datetime.now(timezone.utc)
