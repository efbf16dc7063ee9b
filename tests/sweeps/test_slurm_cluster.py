"""Sweeps through a real SLURM scheduler: the single-node cluster of ``.ci/slurm-cluster.sh``.

``.ci/run`` starts it and sets ``BENCH_TEST_SLURM_BIN`` (its sbatch/squeue/scancel wrappers);
without it these tests skip. The grids are tiny (smoke profile, synthetic data).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

SLURM_ENV = "BENCH_TEST_SLURM_BIN"


@pytest.fixture
def slurm(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cluster's tool wrappers on PATH; skip (saying why) where no cluster runs."""
    bin_dir = os.environ.get(SLURM_ENV)
    if not bin_dir or not (Path(bin_dir) / "sbatch").is_file():
        pytest.skip(
            f"no SLURM cluster: set {SLURM_ENV} (`.ci/slurm-cluster.sh start DIR` prints it; "
            "needs root and Debian's slurm-wlm and munge)"
        )
    sinfo = subprocess.run(
        [str(Path(bin_dir) / "sinfo"), "-h", "-o", "%T"], capture_output=True, text=True
    )
    if sinfo.returncode != 0 or not sinfo.stdout.strip():
        pytest.skip(f"the SLURM cluster at {bin_dir} does not answer: {sinfo.stderr.strip()}")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return Path(bin_dir)


def slurm_sweep(tmp_path: Path, name: str, *extra: object) -> list[object]:
    return [
        "sweep",
        "--datasets",
        "synthetic",
        "--profile",
        "smoke",
        "--methods",
        "scratch",
        "--storage",
        f"journal:///{tmp_path / 'study.log'}",
        "--name",
        name,
        "--device",
        "cpu",
        "--launcher",
        "slurm",
        "--slurm-cpus",
        "1",
        "--slurm-time",
        "10",
        "--slurm-allow-sqlite",  # one node: the SQLite store is on its local disk
        "--slurm-folder",
        tmp_path / "slurm",
        *extra,
    ]


def test_a_cancelled_task_is_retried_once_and_tasks_run_one_thread(
    slurm: Path, cli, tmp_path: Path, tmp_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna.trial import TrialState

    from bench.results.store import ResultStore
    from bench.sweeps.studies import load_study, open_storage

    monkeypatch.setenv("BENCH_WORKER_STALL", "2")  # seconds after each validation: time to cancel
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    extra = ("--draws", "3", "--workers", "2", "--heartbeat", "2", "--detach")
    code, out, err = cli(slurm_sweep(tmp_path, "cancel", *extra))
    assert code == 0, out + err
    job = out.split("job ", 1)[1].split()[0]
    study = load_study(open_storage(f"journal:///{tmp_path / 'study.log'}"), "cancel")
    deadline = time.time() + 150
    while time.time() < deadline:  # both workers busy: cancel the first task mid-trial
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if len(running) == 2:
            break
        time.sleep(0.5)
    assert len(running) == 2, [t.state for t in study.get_trials(deepcopy=False)]
    subprocess.run([str(slurm / "scancel"), f"{job}_0"], check=True)
    from bench.commands.sweep import follow

    assert follow(study, job, tmp_path / "slurm", 2, poll=1.0) == 0
    store = ResultStore(tmp_store_url)
    runs = store.runs(status="succeeded")
    assert Counter(r.draw for r in runs) == {0: 1, 1: 1, 2: 1}  # exactly once each
    errors = [t.user_attrs.get("error", "") for t in study.get_trials(deepcopy=False)]
    assert any(e.startswith("interrupted:") and "SIGTERM" in e for e in errors), errors
    assert {r.summary["threads"] for r in runs if r.summary} == {1}  # one CPU: one thread
    code, out, _ = cli(["status", "--storage", f"journal:///{tmp_path / 'study.log'}",
                        "--name", "cancel"])  # fmt: skip
    assert code == 0 and f"SLURM job {job} task 0: CANCELLED" in out


def test_a_task_failing_at_start_is_reported_with_its_error(
    slurm: Path, cli, tmp_path: Path
) -> None:
    setup = 'echo "error: module cuda/12 not found" >&2; exit 1'
    code, out, err = cli(slurm_sweep(tmp_path, "broken", "--slurm-setup", setup))
    assert code == 1, out + err
    assert "task 0: FAILED: error: module cuda/12 not found" in out + err
    assert "1 grid points not done" in err
    code, out, _ = cli(
        ["status", "--storage", f"journal:///{tmp_path / 'study.log'}", "--name", "broken"]
    )
    assert "task 0: FAILED: error: module cuda/12 not found" in out
    assert shutil.which("sbatch") == str(slurm / "sbatch")


def test_a_request_no_node_can_meet_is_reported_not_followed_forever(
    slurm: Path, cli, tmp_path: Path
) -> None:
    code, out, err = cli(slurm_sweep(tmp_path, "big", "--slurm-cpus", "4096"))
    job = out.split("job ", 1)[1].split()[0]
    subprocess.run([str(slurm / "scancel"), job], check=False)
    assert code == 1, out + err
    assert "task 0: PENDING (PartitionConfig)" in out + err
    assert "it will not start as submitted" in out + err and f"scancel {job}" in err


def test_a_pending_task_says_why_and_whether_it_can_start() -> None:
    from bench.sweeps.slurm import TaskState, describe_task

    folder = Path("/nonexistent")
    assert describe_task(folder, "7", TaskState(0, "PENDING", "Priority")) == (
        "task 0: PENDING (Priority)"
    )
    never = describe_task(folder, "7", TaskState(1, "PENDING", "ReqNodeNotAvail, UnavailableNodes"))
    assert never.endswith("it will not start as submitted; change the --slurm-* options")
