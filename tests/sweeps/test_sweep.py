"""Sweeps as Optuna studies: enqueued grid points, local/remote/SLURM workers, fault tolerance.

The end-to-end tests run real workers (``python -m bench worker`` subprocesses) on the synthetic
dataset at the smoke profile; each subprocess pays torch's import (5-15 s on the shared machines),
so the grids are small.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from bench.results.store import ResultStore
from tests.helpers.paths import REPO

POSTGRES_ENV = "BENCH_TEST_POSTGRES_URL"


def sweep_args(storage: str, name: str, *extra: object) -> list[object]:
    return [
        "sweep",
        "--datasets",
        "synthetic",
        "--profile",
        "smoke",
        "--storage",
        storage,
        "--name",
        name,
        *extra,
    ]


def study_trials(storage: str, name: str):
    from bench.sweeps.studies import load_study, open_storage

    return load_study(open_storage(storage), name).get_trials(deepcopy=False)


def assert_grid_stored_once(store: ResultStore, expected: set[tuple[str, str, int]]) -> None:
    """Every (method, shots, draw) succeeded exactly once, nothing else succeeded."""
    runs = store.runs(status="succeeded")
    points = Counter((r.method, r.shots_label, r.draw) for r in runs)
    assert set(points) == expected, points
    assert all(n == 1 for n in points.values()), points
    assert len({r.config_hash for r in runs}) == len(runs)


# --- Pure pieces -------------------------------------------------------------------------------


def test_local_worker_plan_pins_one_worker_per_gpu() -> None:
    from bench.sweeps.workers import plan_local_workers

    plan = plan_local_workers(None, 1, "auto", ["0", "1", "2"])
    assert [w.env for w in plan] == [{"CUDA_VISIBLE_DEVICES": g} for g in ("0", "1", "2")]
    assert {w.device for w in plan} == {"cuda"}
    plan = plan_local_workers(None, 2, "cuda", ["4", "5"])  # CUDA_VISIBLE_DEVICES=4,5 given
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in plan] == ["4", "5", "4", "5"]
    assert [
        w.env["CUDA_VISIBLE_DEVICES"] for w in plan_local_workers(3, 1, "auto", ["0", "1"])
    ] == ["0", "1", "0"]
    assert [w.device for w in plan_local_workers(None, 1, "auto", [])] == ["auto"]  # no GPU: one
    assert [w.device for w in plan_local_workers(2, 1, "cpu", ["0"])] == ["cpu", "cpu"]
    assert plan_local_workers(0, 1, "auto", ["0"]) == []


def test_cpu_workers_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.sweeps.workers import plan_local_workers

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [w.env for w in plan_local_workers(2, 1, "cpu", [], cpus=8)] == [
        {"OMP_NUM_THREADS": "4"}
    ] * 2
    assert [w.env for w in plan_local_workers(3, 1, "cpu", [], cpus=2)] == [
        {"OMP_NUM_THREADS": "1"}
    ] * 3
    assert [w.env for w in plan_local_workers(1, 1, "cpu", [], cpus=8)] == [{}]  # runs in-process
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins
    assert [w.env for w in plan_local_workers(2, 1, "cpu", [], cpus=8)] == [{}, {}]


def test_default_storage_sits_beside_the_results_store(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.sweeps.studies import default_storage_url
    from bench.sweeps.tune import default_tune_store, tuned_dir

    monkeypatch.delenv("BENCH_OPTUNA_STORAGE", raising=False)
    assert (
        default_storage_url("sqlite:////data/run/bench.sqlite")
        == "sqlite:////data/run/optuna.sqlite"
    )
    assert (
        default_storage_url("sqlite:///results/bench.sqlite") == "sqlite:///results/optuna.sqlite"
    )
    pg = "postgresql+psycopg://bench@db/bench"
    assert default_storage_url(pg) == pg  # the store's database (Optuna's tables do not clash)
    assert (
        default_tune_store("sqlite:////data/run/bench.sqlite") == "sqlite:////data/run/tune.sqlite"
    )
    monkeypatch.setenv("BENCH_RESULTS", "/srv/results")  # a server store: the results folder
    assert default_tune_store(pg) == "sqlite:////srv/results/tune.sqlite"
    assert tuned_dir("sqlite:////data/run/bench.sqlite") == Path("/data/run/tuned")
    monkeypatch.setenv("BENCH_OPTUNA_STORAGE", "journal:///shared/sweeps.log")
    assert default_storage_url(pg) == "journal:///shared/sweeps.log"


def test_grid_skips_shots_larger_than_the_pool_and_is_stable(cli, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    code, out, err = cli(
        sweep_args(
            storage,
            "g",
            "--methods",
            "scratch",
            "--shots",
            "1,50,all",
            "--draws",
            "2",
            "--workers",
            "0",
        )
    )
    assert code == 0, err
    assert "skipping synthetic 50-shot" in err and "12 images" in err
    assert "4 grid points — 4 enqueued" in out
    labels = sorted(t.user_attrs["label"] for t in study_trials(storage, "g"))
    assert labels == sorted(
        f"scratch synthetic {s}-shot draw {d} (smoke)" for s in ("1", "all") for d in (0, 1)
    )
    # The same command again enqueues nothing; a wider grid only what is new.
    code, out, _ = cli(
        sweep_args(
            storage,
            "g",
            "--methods",
            "scratch",
            "--shots",
            "1,50,all",
            "--draws",
            "2",
            "--workers",
            "0",
        )
    )
    assert code == 0 and "0 enqueued" in out and "4 already waiting or running" in out
    code, out, _ = cli(
        sweep_args(
            storage,
            "g",
            "--methods",
            "scratch",
            "--shots",
            "1,2,all",
            "--draws",
            "2",
            "--workers",
            "0",
        )
    )
    assert code == 0 and "6 grid points — 2 enqueued" in out
    assert len(study_trials(storage, "g")) == 6
    code, out, _ = cli(["status", "--name", "g", "--storage", storage])
    assert code == 0 and "waiting  6" in out and "0/6 grid points" in out
    code, _, err = cli(["status", "--name", "missing", "--storage", storage])
    assert code == 2 and "no study 'missing'" in err and "studies there: g" in err


def test_param_goes_to_the_methods_that_take_it(cli, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    code, _out, err = cli(
        sweep_args(
            storage,
            "p",
            "--methods",
            "scratch,simclr",
            "--param",
            "temperature=0.2",
            "--workers",
            "0",
        )
    )
    assert code == 0, err
    assert "--param temperature applies to simclr only" in err
    specs = {t.user_attrs["method"]: t.user_attrs["spec"] for t in study_trials(storage, "p")}
    assert specs["simclr"]["params"] == {"temperature": "0.2"} and specs["scratch"]["params"] == {}


def test_worker_stops_after_failures_in_a_row(tmp_path: Path) -> None:
    """A misconfigured worker fails a few trials (errors recorded), not the whole queue."""
    from bench.sweeps.studies import create_study, open_storage
    from bench.sweeps.workers import work

    opened = open_storage(f"sqlite:///{tmp_path / 'f.sqlite'}")
    study = create_study(opened, "f")
    for i in range(5):
        study.enqueue_trial({}, user_attrs={"grid_key": str(i)})

    def objective(trial):
        raise FileNotFoundError("no data root here")

    lines: list[str] = []
    report = work(study, opened, objective, log=lines.append)
    assert report.failed == 3 and "3 trials in a row failed" in lines[-1]
    assert report.gave_up and report.exit_code == 3  # SLURM then reports the task FAILED
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL"] * 3 + ["WAITING"] * 2
    assert trials[0].user_attrs["error"] == "FileNotFoundError: no data root here"


def test_grid_errors_are_one_line(cli, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    code, _, err = cli(sweep_args(storage, "e", "--methods", "scratch,nope", "--workers", "0"))
    assert code == 2 and "unknown method 'nope'" in err
    code, _, err = cli(
        sweep_args(storage, "e", "--methods", "scratch", "--shots", "50", "--workers", "0")
    )
    assert code == 2 and "grid is empty" in err
    code, _, err = cli(
        sweep_args(storage, "e", "--methods", "scratch", "--param", "tau=1", "--workers", "0")
    )
    assert code == 2 and "no parameter(s) tau" in err
    code, _, err = cli(["status", "--name", "missing", "--storage", storage])
    assert code == 2 and "no study storage at" in err and not Path(storage[10:]).exists()


CLAIMER = textwrap.dedent("""
    import json, sys, time
    from bench.sweeps.studies import load_study, open_storage
    from bench.sweeps.workers import work
    opened = open_storage(sys.argv[1], heartbeat=30)
    study = load_study(opened, "race")
    ran = []
    def objective(trial):
        ran.append(trial.user_attrs["grid_key"])
        time.sleep(0.01)
        return 1.0
    work(study, opened, objective, wait=False, log=lambda line: None)
    json.dump(ran, open(sys.argv[2], "w"))
""")


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_concurrent_workers_never_run_a_trial_twice(tmp_path: Path, kind: str) -> None:
    """Workers racing on one storage claim each waiting trial exactly once (no torch involved)."""
    from optuna.trial import TrialState

    from bench.sweeps.studies import create_study, open_storage

    storage = (
        f"sqlite:///{tmp_path / 'race.sqlite'}"
        if kind == "sqlite"
        else f"journal:///{tmp_path / 'race.log'}"
    )
    study = create_study(open_storage(storage), "race")
    for i in range(40):
        study.enqueue_trial({}, user_attrs={"grid_key": str(i)})
    outs = [tmp_path / f"ran-{i}.json" for i in range(3)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, storage, str(out)], env=env)
        for out in outs
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    ran = Counter(key for out in outs for key in json.loads(out.read_text()))
    assert sorted(ran, key=int) == [str(i) for i in range(40)]
    assert set(ran.values()) == {1}, [k for k, n in ran.items() if n > 1]
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 40 and {t.state for t in trials} == {TrialState.COMPLETE}


def test_stale_trial_is_failed_and_retried_once(tmp_path: Path) -> None:
    """A claimed trial whose heartbeat stops is failed by the next worker and re-enqueued."""
    from optuna.trial import TrialState

    from bench.sweeps.studies import create_study, fail_stale, open_storage
    from bench.sweeps.workers import Heartbeat, claim

    opened = open_storage(f"journal:///{tmp_path / 'stale.log'}", heartbeat=1, grace=1)
    seen = []
    opened.callback.hooks.append(lambda study, trial: seen.append(trial.number))
    study = create_study(opened, "s")
    study.enqueue_trial({}, user_attrs={"grid_key": "k", "label": "point"})
    trial = claim(study, opened)
    with Heartbeat(opened, trial._trial_id):  # one beat, then the "worker" dies
        pass
    fail_stale(study)
    assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING  # still within grace
    time.sleep(2.2)
    fail_stale(study)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs == {"grid_key": "k", "label": "point"} and seen == [0]
    assert claim(study, opened).number == 1 and claim(study, opened) is None


# --- End to end ----------------------------------------------------------------------------------


def test_two_local_workers_store_every_grid_point_once(
    cli, tmp_path: Path, tmp_store_url: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    args = sweep_args(
        storage,
        "two",
        "--methods",
        "scratch,simclr",
        "--shots",
        "1,2",
        "--draws",
        "2",
        "--workers",
        "2",
    )
    code, out, err = cli(args)
    assert code == 0, out + err
    assert "8 grid points — 8 enqueued" in out and "2 local workers" in err
    assert_grid_stored_once(
        ResultStore(tmp_store_url),
        {(m, s, d) for m in ("scratch", "simclr") for s in ("1", "2") for d in (0, 1)},
    )
    trials = study_trials(storage, "two")
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    logs = sorted((tmp_path / "store" / "logs" / "two").glob("worker-*.log"))
    assert len(logs) == 2 and all("worker done" in log.read_text() for log in logs)
    # Nothing is missing: the same command finishes at once, starting no worker.
    code, out, err = cli(args)
    assert code == 0 and "0 enqueued, 8 done" in out and "local workers" not in err


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_killed_worker_is_retried_and_nothing_is_duplicated(
    cli, tmp_path: Path, tmp_store_url: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    args = sweep_args(
        storage,
        "kill",
        "--methods",
        "scratch",
        "--shots",
        "1",
        "--draws",
        "2",
        "--heartbeat",
        "1",
        "--grace",
        "4",
    )
    code, out, err = cli([*args, "--workers", "0"])
    assert code == 0, err
    # A worker that stalls inside its first run (after the store marked it running)...
    env = {**os.environ, "BENCH_WORKER_STALL": "300", "PYTHONPATH": str(REPO)}
    victim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "worker",
            "--storage",
            storage,
            "--name",
            "kill",
            "--heartbeat",
            "1",
            "--grace",
            "4",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = ResultStore(tmp_store_url)
    try:
        wait_for(lambda: store.runs(status="running"), 120, "the victim's run to start")
    finally:
        victim.send_signal(signal.SIGKILL)  # ...is killed mid-trial.
        victim.wait()
    [lost] = store.runs(status="running")
    assert [t.state.name for t in study_trials(storage, "kill")].count("RUNNING") == 1
    # Re-running the sweep: the stale trial is failed, retried and everything finishes once.
    code, out, err = cli([*args, "--workers", "1"])
    assert code == 0, out + err
    assert "0 enqueued" in out
    assert_grid_stored_once(store, {("scratch", "1", 0), ("scratch", "1", 1)})
    [interrupted] = [r for r in store.runs() if r.id == lost.id]
    assert interrupted.status == "failed" and interrupted.error.startswith("interrupted")
    states = Counter(t.state.name for t in study_trials(storage, "kill"))
    assert states["COMPLETE"] == 2 and states["FAIL"] >= 1 and set(states) == {"COMPLETE", "FAIL"}


@pytest.fixture
def postgres_url() -> str:
    """A fresh database on the PostgreSQL test server (``$BENCH_TEST_POSTGRES_URL``); dropped."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(
            f"no PostgreSQL server: set {POSTGRES_ENV} (e.g. postgresql+psycopg://"
            "postgres@127.0.0.1:55432/postgres; .ci/run starts one)"
        )
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"bench_sweep_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_sweep_on_postgresql_with_two_workers(cli, postgres_url: str, tmp_path: Path) -> None:
    """Study and results store both on a real PostgreSQL server, as for several machines."""
    code, out, err = cli(
        [
            "sweep",
            "--datasets",
            "synthetic",
            "--profile",
            "smoke",
            "--methods",
            "scratch,simclr",
            "--shots",
            "1",
            "--draws",
            "2",
            "--workers",
            "2",
            "--store",
            postgres_url,
            "--name",
            "pg",
            "--log-dir",
            tmp_path / "logs",
        ]
    )
    assert code == 0, out + err
    assert "4 grid points — 4 enqueued" in out
    assert_grid_stored_once(
        ResultStore(postgres_url), {(m, "1", d) for m in ("scratch", "simclr") for d in (0, 1)}
    )
    trials = study_trials(postgres_url, "pg")  # the default storage: the store's database
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4
    assert len({t.user_attrs["worker"] for t in trials}) >= 1
    code, out, _ = cli(["status", "--name", "pg", "--store", postgres_url])
    assert code == 0 and "4/4 grid points (100%)" in out
    assert len(list((tmp_path / "logs").glob("worker-*.log"))) == 2


# --- SLURM ---------------------------------------------------------------------------------------


def test_slurm_launcher_submits_a_worker_array(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cluster: fake ``srun``/``sbatch`` on PATH; check the sbatch script and pickled task."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch-args\necho "Submitted batch job 4242"\n'
    )
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    enqueue_storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    folder = tmp_path / "slurm"
    code, out, err = cli(
        sweep_args(
            enqueue_storage,
            "slurm-sweep",
            "--methods",
            "scratch",
            "--launcher",
            "slurm",
            "--workers",
            "3",
            "--slurm-time",
            "90",
            "--slurm-partition",
            "gpu",
            "--slurm-mem-gb",
            "32",
            "--slurm-setup",
            "module load cuda",
            "--slurm-folder",
            folder,
            "--slurm-gpus",
            "1",
            "--slurm-allow-sqlite",
            "--detach",
        )
    )
    assert code == 0, out + err
    assert "submitted 3 SLURM workers: job 4242" in out
    follow = f"python -m bench status --name slurm-sweep --storage {enqueue_storage}"
    assert f"follow with: {follow}" in out
    [script] = folder.glob("**/*_submission.sh")
    text = script.read_text()
    assert (tmp_path / "sbatch-args").read_text().strip().endswith(".sh")
    for line in (
        "#SBATCH --array=0-2%3",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --partition=gpu",
        "#SBATCH --job-name=bench-slurm-sweep",
        "#SBATCH --nodes=1",
        "module load cuda",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
    ):
        assert line in text.splitlines(), (line, text)
    assert "srun" in text and "-m submitit.core._submit" in text
    pickles = sorted(folder.glob("**/*_submitted.pkl"))
    assert len(pickles) == 3
    tasks = [pickle.loads(p.read_bytes()) for p in pickles]
    from bench.sweeps.slurm import slurm_task

    assert {t.function for t in tasks} == {slurm_task}
    assert sorted(t.args[1] for t in tasks) == [0, 1, 2]
    opts = tasks[0].args[0]
    assert (opts.storage, opts.name) == (enqueue_storage, "slurm-sweep")
    assert opts.store.startswith("sqlite:///")


def test_slurm_parameters_without_gpus() -> None:
    from bench.sweeps.slurm import SlurmSettings, slurm_parameters

    params = slurm_parameters(
        SlurmSettings(Path("x"), workers=5, gpus_per_task=0, cpus_per_task=4, array_parallelism=2)
    )
    assert "gpus_per_node" not in params
    assert (
        params["array_parallelism"] == 2 and params["cpus_per_task"] == 4 and params["time"] == 1440
    )
