"""Sweeps under faults: a kill between claim and first heartbeat, mixed heartbeat settings,
concurrent enqueue on a fresh storage. No torch: the processes here only touch the study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


KINDS = ["sqlite", "journal", "postgresql"]


def storage_url(tmp_path: Path, kind: str, stem: str = "s") -> str:
    """A fresh storage of ``kind``; for PostgreSQL a new database on the test server."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'{stem}.sqlite'}"
    if kind == "journal":
        return f"journal:///{tmp_path / f'{stem}.log'}"
    server = os.environ.get("BENCH_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("no PostgreSQL server: set BENCH_TEST_POSTGRES_URL (.ci/run starts one)")
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"bench_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


CLAIM_AND_DIE = textwrap.dedent("""
    import os, signal, sys
    from bench.sweeps.studies import load_study, open_storage
    from bench.sweeps.workers import claim
    opened = open_storage(sys.argv[1])
    trial = claim(load_study(opened, "k"), opened)
    assert trial is not None
    os.kill(os.getpid(), signal.SIGKILL)  # after the claim, before any heartbeat
""")


@pytest.mark.parametrize("kind", KINDS)
def test_worker_killed_between_claim_and_heartbeat_is_recovered(tmp_path: Path, kind: str) -> None:
    from optuna.trial import TrialState

    from bench.sweeps.studies import create_study, fail_stale, open_storage

    url = storage_url(tmp_path, kind)
    opened = open_storage(url)
    study = create_study(opened, "k", heartbeat=1, grace=2)
    study.enqueue_trial({}, user_attrs={"grid_key": "g", "label": "point"})
    proc = subprocess.run([sys.executable, "-c", CLAIM_AND_DIE, url], env=ENV, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.RUNNING]
    time.sleep(3.0)
    fail_stale(study)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs == {"grid_key": "g", "label": "point"}


@pytest.mark.parametrize("kind", KINDS)
def test_workers_use_the_studys_heartbeat_not_their_flags(tmp_path: Path, kind: str) -> None:
    """A worker started with a 1 s grace must not fail a live trial of a study beating every 4 s."""
    from optuna.trial import TrialState

    from bench.sweeps.studies import create_study, fail_stale, load_study, open_storage
    from bench.sweeps.workers import Heartbeat, claim

    url = storage_url(tmp_path, kind)
    slow = open_storage(url, heartbeat=4)
    study = create_study(slow, "m", heartbeat=4, grace=8)
    study.enqueue_trial({}, user_attrs={"grid_key": "g"})
    trial = claim(study, slow)
    assert trial is not None
    with Heartbeat(slow, trial._trial_id):
        pass  # one beat now; the next would come in 4 s
    notes: list[str] = []
    hasty = open_storage(url, heartbeat=1, grace=1)
    hasty_study = load_study(hasty, "m", heartbeat=1, grace=1, warn=notes.append)
    assert hasty.storage.get_heartbeat_interval() == 4
    assert notes and "beats every 4 s with 8 s grace" in notes[0] and "--grace 1" in notes[0]
    time.sleep(2.5)
    fail_stale(hasty_study)
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.RUNNING]
    # flags only set a new study's settings
    other = create_study(open_storage(url, heartbeat=1, grace=3), "n", heartbeat=1, grace=3)
    assert (other.user_attrs["heartbeat_s"], other.user_attrs["grace_s"]) == (1, 3)


ENQUEUER = textwrap.dedent("""
    import dataclasses, sys, time
    from bench.sweeps.studies import create_study, open_storage
    from bench.sweeps.sweep import enqueue

    @dataclasses.dataclass(frozen=True)
    class Spec:  # the fields a RunSpec has that enqueue reads (no torch import here)
        method: str
        dataset: str = "synthetic"
        shots: str = "1"
        draw: int = 0
        profile: str = "smoke"
        params: dict = dataclasses.field(default_factory=dict)

    specs = [Spec(method=f"m{i}", draw=d) for i in range(6) for d in range(3)]
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.001)
    opened = open_storage(sys.argv[1])
    report = enqueue(create_study(opened, "grid"), specs, opened)
    print(report.added)
""")


@pytest.mark.parametrize("kind", KINDS)
def test_two_sweeps_enqueueing_at_once_on_a_fresh_storage(tmp_path: Path, kind: str) -> None:
    """Both processes succeed (no "table already exists") and every grid point is queued once."""
    from bench.sweeps.studies import load_study, open_storage

    for attempt in range(3):
        url = storage_url(tmp_path, kind, f"fresh{attempt}")
        start = time.time() + 4.0  # both have imported optuna by then
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", ENQUEUER, url, str(start)],
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert sorted(int(out) for out, _ in outs) == [0, 18]
        trials = load_study(open_storage(url), "grid").get_trials(deepcopy=False)
        keys = Counter(t.user_attrs["grid_key"] for t in trials)
        assert len(keys) == 18 and set(keys.values()) == {1}


# --- The results store: errors after a run starts, runs whose process is gone ------------------

KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from bench.results.store import NewRun, ResultStore
    store = ResultStore(sys.argv[1])
    store.start_run(NewRun(
        config_hash="c0ffee", method="scratch", dataset="synthetic", split="generated", shots=1,
        shots_label="1", draw=0, seed=0, profile="smoke", init="random", encoder="resnet18",
        arch="unet", config={}, images=[], device="cpu",
    ))
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_running_rows_of_a_killed_process_on_this_host_are_failed(
    tmp_path: Path, tmp_store_url: str
) -> None:
    from bench.results.store import ResultStore
    from tests.helpers.store import add_run

    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, tmp_store_url], env=ENV, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    store = ResultStore(tmp_store_url)
    add_run(store, "simclr", 0.5)  # succeeded, host "testhost": untouched
    [killed] = store.runs(status="running")
    assert killed.pid is not None and killed.pid != os.getpid()
    from dataclasses import replace

    from bench.results.store import NewRun

    fields = {k: getattr(killed, k) for k in NewRun.__dataclass_fields__}
    alive = store.start_run(replace(NewRun(**fields), config_hash="alive", pid=os.getpid()))
    elsewhere = store.start_run(replace(NewRun(**fields), config_hash="other", host="node7"))
    assert store.fail_gone_runs() == 1
    [gone] = store.runs(config_hash="c0ffee")
    assert gone.status == "failed" and f"process {killed.pid}" in (gone.error or "")
    assert {r.id for r in store.runs(status="running")} == {alive, elsewhere}
    assert len(store.runs(status="succeeded")) == 1


def test_an_error_while_writing_the_results_fails_the_run_with_one_line(
    tmp_path: Path, tmp_store_url: str
) -> None:
    """Predictions cannot be written (their folder is a file): the run is failed, not 'running'."""
    from bench.core.errors import BenchError
    from bench.runner import RunSpec, make_env, run_one

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "predictions").write_text("not a folder")
    env = make_env(None, tmp_store_url, "cpu", str(cache))
    with pytest.raises(BenchError, match=r"cannot write predictions to folder .*predictions"):
        run_one(RunSpec(method="scratch", dataset="synthetic", profile="smoke"), env)
    assert env.store is not None
    [run] = env.store.runs()
    assert run.status == "failed" and "cannot write predictions" in (run.error or "")


# --- Stop signals, SLURM submission ------------------------------------------------------------

STOPPABLE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bench.sweeps.studies import load_study, open_storage
    from bench.sweeps.workers import handle_stop_signals, work
    handle_stop_signals()
    opened = open_storage(sys.argv[1])
    def objective(trial):
        Path(sys.argv[2]).write_text("started")
        time.sleep(120)
        return 1.0
    report = work(load_study(opened, "sig"), opened, objective, log=print)
    sys.exit(report.exit_code)
""")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR2"])
def test_a_stop_signal_interrupts_the_trial_retries_it_and_claims_nothing_more(
    tmp_path: Path, signame: str
) -> None:
    from optuna.trial import TrialState

    from bench.sweeps.studies import create_study, open_storage

    url = storage_url(tmp_path, "sqlite")
    study = create_study(open_storage(url), "sig")
    for key in ("a", "b"):
        study.enqueue_trial({}, user_attrs={"grid_key": key})
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPABLE, url, str(started)],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out  # stopped by a signal
    assert f"stopped by {signame}" in out
    trials = study.get_trials(deepcopy=False)
    assert [(t.user_attrs["grid_key"], t.state) for t in trials] == [
        ("a", TrialState.FAIL),
        ("b", TrialState.WAITING),  # not claimed after the signal
        ("a", TrialState.WAITING),  # the interrupted point, retried
    ]
    assert trials[0].user_attrs["error"].startswith("interrupted:")
    assert signame in trials[0].user_attrs["error"]


def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sbatch: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\n" + sbatch)
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


SLURM_SWEEP = ["sweep", "--datasets", "synthetic", "--profile", "smoke", "--methods", "scratch"]


def test_an_sbatch_refusal_is_one_line_naming_the_option(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_slurm(
        tmp_path,
        monkeypatch,
        'echo "sbatch: error: invalid partition specified: gpu" >&2\n'
        'echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2\n'
        "exit 1\n",
    )
    storage = f"journal:///{tmp_path / 'j.log'}"
    args = [*SLURM_SWEEP, "--storage", storage, "--launcher", "slurm", "--slurm-partition", "gpu"]
    code, out, err = cli([*args, "--slurm-folder", tmp_path / "slurm"])
    assert code == 2, out + err
    assert "SQLite" in err and "--slurm-allow-sqlite" in err  # the results store is SQLite
    code, out, err = cli([*args, "--slurm-folder", tmp_path / "slurm", "--slurm-allow-sqlite"])
    assert code == 2, out + err
    [line] = [ln for ln in err.splitlines() if ln.strip()]
    assert "Batch job submission failed: Invalid partition name specified" in line
    assert "change --slurm-partition" in line and "Traceback" not in err


def test_slurm_tasks_get_no_password_and_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    from bench.sweeps.slurm import SlurmSettings, submit_slurm
    from bench.sweeps.workers import WorkerOptions

    fake_slurm(tmp_path, monkeypatch, 'echo "Submitted batch job 77"\n')
    secret = "postgresql+psycopg://bench:hunter2@db.example/bench"
    opts = WorkerOptions(storage=secret, name="s", store=secret, data_root="/data")
    folder = tmp_path / "slurm"
    submit_slurm(SlurmSettings(folder, workers=2, cpus_per_task=1), opts)
    written = [p for p in folder.rglob("*") if p.is_file() and p.name != "urls.json"]
    assert written and not any(b"hunter2" in p.read_bytes() for p in written)
    urls = folder / "urls.json"
    assert urls.stat().st_mode & 0o777 == 0o600 and "hunter2" in urls.read_text()
    task = pickle.loads(next(folder.glob("**/*_submitted.pkl")).read_bytes())
    assert task.args[0].storage == "postgresql+psycopg://bench:***@db.example/bench"
    assert task.args[2] == str(urls)


def test_printed_commands_are_complete(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli([*SLURM_SWEEP, "--storage", "journal://rel/j.log", "--workers", "0"])
    assert code == 0, out + err
    absolute = f"journal://{tmp_path / 'rel' / 'j.log'}"
    assert f"python -m bench status --name sweep-smoke --storage {absolute}" in out
    assert f"--storage {absolute}" in out.split("python -m bench worker", 1)[1]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_status_shows_each_workers_last_heartbeat(cli, tmp_path: Path, kind: str) -> None:
    from bench.sweeps.studies import create_study, open_storage
    from bench.sweeps.workers import claim

    url = storage_url(tmp_path, kind)
    opened = open_storage(url)
    study = create_study(opened, "live", heartbeat=30, grace=60)
    study.enqueue_trial({}, user_attrs={"grid_key": "g", "label": "scratch synthetic 1-shot"})
    trial = claim(study, opened)
    assert trial is not None
    trial.set_user_attr("worker", "node3:4242")
    code, out, _ = cli(["status", "--storage", url, "--name", "live"])
    assert code == 0
    [line] = [ln for ln in out.splitlines() if ln.startswith("worker node3:4242")]
    assert "scratch synthetic 1-shot, last heartbeat" in line and "grace" not in line
    study.set_user_attr("grace_s", 1)  # as if the study had a 1 s grace: the claim is too old
    time.sleep(2.5)  # beyond the grace even on a clock of whole seconds (SQLite's)
    _, out, _ = cli(["status", "--storage", url, "--name", "live"])
    assert "over the 1 s grace: worker gone, the trial will be retried" in out
