"""The results store on SQLite (and PostgreSQL when BENCH_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import math
import os
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from bench.results import store as store_module
from bench.core.errors import BenchError
from bench.results.store import DuplicateResult, MetricRow, NewRun, ResultStore, default_store_url, metrics_table, runs_table
from bench.core.provenance import collect_versions, config_hash, git_commit

POSTGRES_SKIP = "set BENCH_TEST_POSTGRES_URL to a PostgreSQL URL to run this test"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ResultStore:
    if request.param == "sqlite":
        return ResultStore(f"sqlite:///{tmp_path / 'bench.sqlite'}")
    url = os.environ.get("BENCH_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(POSTGRES_SKIP)
    return ResultStore(url)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> ResultStore:
    return ResultStore(f"sqlite:///{tmp_path / 'bench.sqlite'}")


def new_run(method: str = "simclr", **config: object) -> NewRun:
    """A run whose config hash is unique per test (PostgreSQL databases outlive tests)."""
    config = {"method": method, "nonce": uuid.uuid4().hex, **config}
    return NewRun(
        config_hash=config_hash(config),
        method=method,
        dataset="metaldam",
        split="default",
        shots=4,
        shots_label="4",
        draw=0,
        seed=7,
        profile="quick",
        init="ssl",
        encoder="resnet18",
        arch="unet",
        config=config,
        images=["a.png", "b.png", "c.png", "d.png"],
        device="cpu",
    )


def metric_rows(miou: float = 0.5) -> list[MetricRow]:
    return [
        MetricRow("honest", "val", "test", "miou", miou),
        MetricRow("honest", "val", "test", "iou", 0.8, class_id=0),
        MetricRow("honest", "val", "test", "iou", float("nan"), class_id=1),
        MetricRow("honest", "oracle", "test", "miou", miou + 0.1),
        MetricRow("honest", "val", "val", "step", 300.0),
    ]


def statuses(store: ResultStore, config_hash: str) -> list[str]:
    return [run.status for run in store.runs(config_hash=config_hash)]


def test_round_trip_with_per_class_metrics_and_nan(store: ResultStore) -> None:
    record = new_run()
    run_id = store.start_run(record)
    assert store.succeeded(record.config_hash) is None
    store.finish_run(run_id, metric_rows(), {"curve": [1.0, float("nan")], "step": 300})

    run = store.succeeded(record.config_hash)
    assert run is not None and run.id == run_id and run.status == "succeeded" and run.error is None
    assert run.config == record.config and run.images == record.images
    assert run.summary == {"curve": [1.0, None], "step": 300}  # NaN in JSON stored as null
    assert run.started_at.tzinfo is not None and run.started_at.utcoffset() == timedelta(0)
    assert run.started_at <= run.ended_at <= datetime.now(timezone.utc)
    assert run.versions == record.versions and run.host == record.host

    frame = store.metrics_frame(run_id=run_id)
    assert len(frame) == 5 and set(frame.run_id) == {run_id}
    per_class = frame[frame.metric == "iou"].set_index("class_id")["value"]
    assert per_class[0] == pytest.approx(0.8) and math.isnan(per_class[1])
    assert frame[frame.metric == "miou"].class_id.isna().all()


def test_second_success_for_same_config_is_a_duplicate(store: ResultStore) -> None:
    record = new_run()
    first, second = store.start_run(record), store.start_run(record)
    store.finish_run(first, metric_rows(), {})
    with pytest.raises(DuplicateResult, match=f"duplicates run {first}") as caught:
        store.finish_run(second, metric_rows(0.9), {})
    assert caught.value.existing_id == first
    assert statuses(store, record.config_hash) == ["succeeded", "failed"]
    assert store.runs(id=second)[0].error == f"duplicate of run {first}"
    everything = store.metrics_frame(status=None, config_hash=record.config_hash)
    assert set(everything.run_id) == {first}


def test_a_forced_rerun_replaces_the_result_only_when_it_succeeds(store: ResultStore) -> None:
    record = new_run()
    first = store.start_run(record)
    store.finish_run(first, metric_rows(), {})
    failed = store.start_run(record)  # a redo that fails keeps the earlier result
    store.fail_run(failed, "boom")
    assert store.succeeded(record.config_hash).id == first

    rerun = store.start_run(record)
    assert store.succeeded(record.config_hash).id == first  # still there while the redo runs
    store.finish_run(rerun, metric_rows(0.7), {}, replace=True)
    assert store.succeeded(record.config_hash).id == rerun
    assert statuses(store, record.config_hash) == ["superseded", "failed", "succeeded"]
    frame = store.metrics_frame(config_hash=record.config_hash, metric="miou", selection="val")
    assert list(frame.value) == [pytest.approx(0.7)]


def test_failed_run_keeps_error_and_no_metrics(sqlite_store: ResultStore) -> None:
    record = new_run()
    run_id = sqlite_store.start_run(record)
    sqlite_store.fail_run(run_id, "CUDA out of memory")
    run = sqlite_store.runs(id=run_id)[0]
    assert (run.status, run.error) == ("failed", "CUDA out of memory") and run.ended_at is not None
    assert sqlite_store.metrics_frame(status=None, run_id=run_id).empty
    assert sqlite_store.succeeded(record.config_hash) is None


def test_crash_between_start_and_finish_leaves_running_row(sqlite_store: ResultStore) -> None:
    record = new_run()
    with pytest.raises(RuntimeError):
        sqlite_store.start_run(record)
        raise RuntimeError("killed mid-training")
    [run] = sqlite_store.runs(config_hash=record.config_hash)
    assert run.status == "running" and run.ended_at is None
    assert sqlite_store.metrics_frame(status=None).empty


def test_mark_stale_running(sqlite_store: ResultStore) -> None:
    old, fresh, done = (sqlite_store.start_run(new_run()) for _ in range(3))
    sqlite_store.finish_run(done, metric_rows(), {})
    long_ago = datetime.now(timezone.utc) - timedelta(days=2)
    with sqlite_store.engine.begin() as conn:
        stale = update(runs_table).where(runs_table.c.id.in_([old, done]))
        conn.execute(stale.values(started_at=long_ago))

    assert sqlite_store.mark_stale_running(timedelta(days=1)) == 1
    by_id = {run.id: run for run in sqlite_store.runs()}
    assert (by_id[old].status, by_id[old].error) == ("failed", "interrupted")
    assert by_id[fresh].status == "running" and by_id[done].status == "succeeded"


def test_metrics_frame_columns_and_filters(sqlite_store: ResultStore) -> None:
    simclr, byol = new_run("simclr"), new_run("byol")
    for record in (simclr, byol):
        sqlite_store.finish_run(sqlite_store.start_run(record), metric_rows(), {})
    sqlite_store.start_run(new_run("mae"))  # running: no metrics
    failed = sqlite_store.start_run(new_run("dino"))
    sqlite_store.fail_run(failed, "boom")

    frame = sqlite_store.metrics_frame()
    assert list(frame.columns) == [
        "run_id", "config_hash", "method", "dataset", "split", "shots", "shots_label", "draw",
        "profile", "init", "encoder", "arch", "pool",
        "protocol", "selection", "split_part", "metric", "value", "class_id", "mode",
    ]  # fmt: skip
    assert len(frame) == 10 and set(frame.method) == {"simclr", "byol"}
    assert str(frame.class_id.dtype) == "Int64" and str(frame.value.dtype) == "float64"

    only = sqlite_store.metrics_frame(method="byol", selection="oracle", metric=["miou", "iou"])
    assert list(only.method) == ["byol"] and list(only.selection) == ["oracle"]
    unfiltered = sqlite_store.metrics_frame(method="byol", dataset=None)  # None: no filter
    assert unfiltered.shape == (5, 20)
    assert sqlite_store.metrics_frame(method="mae").empty
    with pytest.raises(BenchError, match="unknown filter 'colour'"):
        sqlite_store.metrics_frame(colour="red")

    runs = sqlite_store.runs_frame(status=["running", "failed"])
    assert sorted(runs.method) == ["dino", "mae"] and "summary" in runs.columns
    assert sqlite_store.runs_frame(method="none").empty


def test_unique_success_index_catches_a_missed_check(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The concurrent case: the in-transaction check saw no success, the unique index still does."""
    record = new_run()
    first, second = store.start_run(record), store.start_run(record)
    store.finish_run(first, metric_rows(), {})
    real, calls = store_module._succeeded_id, []

    def blind_once(conn, config_hash):  # the check misses the first time only, as in a race
        calls.append(config_hash)
        return None if len(calls) == 1 else real(conn, config_hash)

    monkeypatch.setattr(store_module, "_succeeded_id", blind_once)
    with pytest.raises(DuplicateResult):
        store.finish_run(second, metric_rows(), {})
    assert statuses(store, record.config_hash) == ["succeeded", "failed"]
    assert set(store.metrics_frame(status=None, config_hash=record.config_hash).run_id) == {first}


def test_racing_stores_leave_one_success(store: ResultStore) -> None:
    stores = [store, ResultStore(store.url)]
    for _ in range(3):
        record = new_run()
        run_ids = [s.start_run(record) for s in stores]
        barrier, outcomes = threading.Barrier(len(stores)), []

        def finish(s: ResultStore, run_id: int) -> None:
            barrier.wait()
            try:
                s.finish_run(run_id, metric_rows(), {})
                outcomes.append("succeeded")
            except DuplicateResult:
                outcomes.append("duplicate")

        threads = [threading.Thread(target=finish, args=pair) for pair in zip(stores, run_ids)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["duplicate", "succeeded"]
        assert sorted(statuses(store, record.config_hash)) == ["failed", "succeeded"]
        winner = store.succeeded(record.config_hash).id
        assert set(store.metrics_frame(config_hash=record.config_hash).run_id) == {winner}


def test_finishing_a_finished_run_is_refused(sqlite_store: ResultStore) -> None:
    run_id = sqlite_store.start_run(new_run())
    sqlite_store.finish_run(run_id, metric_rows(), {})
    with pytest.raises(ValueError, match="is succeeded"):
        sqlite_store.finish_run(run_id, metric_rows(), {})
    sqlite_store.fail_run(run_id, "late error")  # no effect on a finished run
    assert sqlite_store.runs(id=run_id)[0].status == "succeeded"


def test_deleting_a_run_cascades_to_its_metrics(sqlite_store: ResultStore) -> None:
    run_id = sqlite_store.start_run(new_run())
    sqlite_store.finish_run(run_id, metric_rows(), {})
    with sqlite_store.engine.begin() as conn:
        conn.execute(delete(runs_table).where(runs_table.c.id == run_id))
        assert conn.execute(metrics_table.select()).all() == []


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:secret@127.0.0.1:1/x",
        "postgresql+psycopg://u:secret@127.0.0.1:1/x",
        "postgresql+psycopg2://u:secret@127.0.0.1:1/x",  # driver likely missing
        "nosuchdb://u:secret@host/x",
        "not a url at all u:secret@",
        "sqlite:////proc/no/such/dir/bench.sqlite",
    ],
)
def test_bad_url_names_it_with_password_masked(url: str) -> None:
    with pytest.raises(BenchError, match="cannot open results store") as caught:
        ResultStore(url)
    message = str(caught.value)
    assert "secret" not in message
    assert url.split("secret")[-1] in message  # the URL is named (host and database)


def test_default_url_and_sqlite_parent_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BENCH_STORE", raising=False)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "res"))  # the results folder, not the cwd
    assert default_store_url() == f"sqlite:///{tmp_path / 'res' / 'bench.sqlite'}"
    monkeypatch.chdir(tmp_path)
    ResultStore()
    assert (tmp_path / "res" / "bench.sqlite").is_file()
    assert not (tmp_path / "results").exists()

    monkeypatch.setenv("BENCH_STORE", f"sqlite:///{tmp_path / 'deep' / 'er' / 'x.sqlite'}")
    assert ResultStore().url == default_store_url()
    assert (tmp_path / "deep" / "er" / "x.sqlite").is_file()


def test_helpers() -> None:
    assert config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2}) and len(config_hash({})) == 16
    versions = collect_versions()
    assert versions["python"] and set(versions) >= {"torch", "numpy", "segmentation_models_pytorch"}
    commit = git_commit()
    assert commit is None or len(commit.removesuffix("-dirty")) == 40


def test_a_store_of_an_older_schema_is_a_clear_error(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    ResultStore(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:  # as a version without the 'mode' column wrote it
        db.execute("ALTER TABLE metrics DROP COLUMN mode")
    with pytest.raises(BenchError, match=r"older microssl-bench: table 'metrics' lacks column\(s\) mode"):
        ResultStore(f"sqlite:///{path}")
