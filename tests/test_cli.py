"""The command line: listings, one-line user errors (exit 2, no traceback), one end-to-end run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.results.store import ResultStore
from tests.helpers.paths import REPO


def assert_user_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_help(cli) -> None:
    code, out, _ = cli(["--help"])
    assert code == 0
    for command in ("run", "methods", "data"):
        assert command in out
    code, out, _ = cli(["run", "--help"])
    assert code == 0 and "--shots" in out and "--draws" in out and "--force" in out


def test_python_dash_m_bench_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: python -m bench" in done.stdout


def test_usage_error_exits_2(cli) -> None:
    code, _, err = cli(["no-such-command"])
    assert code == 2 and "invalid choice" in err


def test_methods_lists_baselines_with_descriptions(cli) -> None:
    code, out, err = cli(["methods"])
    assert code == 0, err
    rows = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") >= 3}
    assert "scratch" in rows and "imagenet" in rows
    assert "random encoder initialisation" in rows["scratch"]
    assert "ImageNet" in rows["imagenet"]


def test_unknown_method(cli) -> None:
    argv = ["run", "--method", "nope", "--dataset", "synthetic", "--profile", "smoke"]
    assert_user_error(*cli(argv), "unknown method 'nope'", "scratch", "imagenet")


def test_unknown_dataset(cli) -> None:
    argv = ["run", "--method", "scratch", "--dataset", "nope", "--profile", "smoke"]
    assert_user_error(*cli(argv), "unknown dataset 'nope'", "metaldam")


def test_unknown_variant(cli) -> None:
    assert_user_error(
        *cli(["run", "--method", "scratch", "--dataset", "ebc1:ternary", "--profile", "smoke"]),
        "ebc1.toml",
        "no variant 'ternary'",
    )


def test_missing_data_root(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing"
    assert_user_error(
        *cli(
            [
                "run",
                "--method",
                "scratch",
                "--dataset",
                "metaldam",
                "--profile",
                "smoke",
                "--data-root",
                missing,
            ]
        ),
        str(missing / "metaldam"),
        "bench data fetch metaldam",
        "BENCH_DATA_ROOT",
        "--dataset synthetic",
    )
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "from-env"))
    argv = ["run", "--method", "scratch", "--dataset", "ebc1", "--profile", "smoke"]
    assert_user_error(*cli(argv), str(tmp_path / "from-env" / "nasa_micronet" / "EBC"))


def test_bad_shots(cli, shared_data: Path) -> None:
    assert_user_error(
        *cli(
            [
                "run",
                "--method",
                "scratch",
                "--dataset",
                "ebc2",
                "--profile",
                "smoke",
                "--shots",
                "8",
                "--data-root",
                shared_data,
            ]
        ),
        "--shots 8",
        "4 images",
        "--shots all",
    )
    assert_user_error(
        *cli(
            [
                "run",
                "--method",
                "scratch",
                "--dataset",
                "ebc2",
                "--profile",
                "smoke",
                "--shots",
                "zero",
                "--data-root",
                shared_data,
            ]
        ),
        "--shots takes positive integers",
    )


def test_data_list(cli, shared_data: Path, tmp_path: Path) -> None:
    code, out, err = cli(["data", "list", "--data-root", shared_data])
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 6}
    assert {"metaldam", "ebc1", "ebc2", "ebc3", "synthetic"} <= set(rows)
    assert "fold0" in rows["metaldam"] and "binary" in rows["ebc1"]
    for name in ("metaldam", "ebc1", "ebc2", "ebc3"):
        assert rows[name].rstrip("│ ").endswith("yes"), rows[name]
    assert rows["synthetic"].rstrip("│ ").endswith("generated")
    assert str(shared_data) in out  # the title names the data root
    code, out, _ = cli(["data", "list", "--data-root", tmp_path])
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 6}
    assert code == 0 and rows["metaldam"].rstrip("│ ").endswith("no")


# --- the one end-to-end run ----------------------------------------------------------------


@pytest.fixture
def one_torch_thread():
    """Two threads on two shared cores make training 10x+ slower (spin-waiting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_run_smoke_end_to_end_then_skip_then_force(
    cli, tmp_store_url: str, one_torch_thread
) -> None:
    argv = [
        "run",
        "--method",
        "scratch",
        "--dataset",
        "synthetic",
        "--shots",
        "1",
        "--draws",
        "2",
        "--profile",
        "smoke",
    ]
    code, out, err = cli(argv)
    assert code == 0, err
    assert "Traceback" not in err
    mean_rows = [line for line in out.splitlines() if "mean n=2" in line]
    assert [row.split()[2] for row in mean_rows] == ["finetune", "probe"], out

    store = ResultStore(tmp_store_url)  # BENCH_STORE points here (conftest)
    first = store.runs()
    assert [(r.status, r.draw, r.method, r.dataset) for r in first] == [
        ("succeeded", 0, "scratch", "synthetic"),
        ("succeeded", 1, "scratch", "synthetic"),
    ]
    hashes = {r.config_hash for r in first}
    assert len(hashes) == 2
    assert all(len(r.images) == 1 and r.images[0].startswith("train_") for r in first)

    code, out, err = cli(argv)
    assert code == 0, err
    assert out.count("skipped scratch 1-shot draw") == 2, out
    assert [r.id for r in store.runs()] == [r.id for r in first]  # nothing new started
    assert sum("mean n=2" in line for line in out.splitlines()) == 2, out

    code, out, err = cli([*argv, "--force"])
    assert code == 0, err
    assert "skipped" not in out
    runs = store.runs()
    assert len(runs) == 4
    by_status: dict[str, list] = {}
    for r in runs:
        by_status.setdefault(r.status, []).append(r)
    assert {r.id for r in by_status["superseded"]} == {r.id for r in first}
    succeeded = by_status["succeeded"]
    assert sorted(r.config_hash for r in succeeded) == sorted(hashes)  # one per config hash
    assert set(by_status) == {"succeeded", "superseded"}
    for h in hashes:
        assert store.succeeded(h) is not None
        assert sum(r.config_hash == h and r.status == "succeeded" for r in runs) == 1


def test_ssl_on_ebc_pretrains_on_its_training_images(
    cli, shared_data: Path, tmp_store_url: str, one_torch_thread
) -> None:
    """EBC has no unlabeled set: an SSL run pretrains on the split's training images only."""
    code, out, err = cli(
        [
            "run",
            "--method",
            "simclr",
            "--dataset",
            "ebc2",
            "--profile",
            "smoke",
            "--data-root",
            shared_data,
        ]
    )
    assert code == 0, out + err
    [run] = ResultStore(tmp_store_url).runs(status="succeeded")
    pool = run.config["pretrain"]["pool"]
    assert pool["dataset"] == "ebc2" and pool["files"] == 4  # EBC-2's 4 training images


def test_an_interrupted_forced_redo_keeps_the_earlier_result(tmp_path: Path) -> None:
    """SIGINT during ``run --force``: the earlier success stays, the redo is recorded failed."""
    import signal
    import time

    import torch

    from bench.results.store import MetricRow, NewRun
    from bench.runner import RunEnv, RunSpec, prepare

    store_url = f"sqlite:///{tmp_path / 'bench.sqlite'}"
    spec = RunSpec(
        method="scratch", dataset="synthetic", profile="smoke", finetune={"steps": 100_000}
    )
    run = prepare(spec, RunEnv(Path("."), None, torch.device("cpu"), tmp_path / "cache"))
    store = ResultStore(store_url)
    earlier = store.start_run(
        NewRun(
            config_hash=run.hash,
            method="scratch",
            dataset="synthetic",
            split=run.split,
            shots=1,
            shots_label="1",
            draw=0,
            seed=0,
            profile="smoke",
            init="random",
            encoder="resnet18",
            arch="unet",
            config=run.config,
            images=["train_000"],
            device="cpu",
        )
    )
    store.finish_run(earlier, [MetricRow("honest", "val", "test", "score", 0.5)], {})
    env = {
        **os.environ,
        "BENCH_STORE": store_url,
        "BENCH_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--method",
            "scratch",
            "--dataset",
            "synthetic",
            "--profile",
            "smoke",
            "--steps",
            "100000",
            "--force",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(store.runs()) < 2:
        time.sleep(0.2)
    assert len(store.runs()) == 2, proc.communicate(timeout=5)
    time.sleep(1.0)  # inside fine-tuning
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "results stored so far are kept" in err
    assert store.succeeded(run.hash).id == earlier
    assert [r.status for r in store.runs()] == ["succeeded", "failed"]


def test_run_output_fits_80_columns_and_shows_every_stored_score(
    cli, tmp_store_url: str, one_torch_thread, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.core import console as consoles
    from bench.reporting.tables import pct

    argv = ["run", "--method", "scratch", "--dataset", "synthetic", "--profile", "smoke"]
    monkeypatch.setattr(consoles.console, "width", 80)
    code, out, err = cli([*argv, "--draws", "2"])
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "…" not in out
    header = next(line.split() for line in out.splitlines() if line.split()[:2] == ["draw", "mode"])
    for run in ResultStore(tmp_store_url).runs():  # every stage's time is kept with the run
        assert {"encoder", "finetune", "probe", "total", "finetune_train", "finetune_eval"} <= set(
            run.summary["seconds"]
        ), run.summary["seconds"]
    frame = ResultStore(tmp_store_url).metrics_frame(metric="score", selection="val")
    for draw in (0, 1):
        for mode in ("finetune", "probe"):
            row = next(
                line.split() for line in out.splitlines() if line.split()[:2] == [str(draw), mode]
            )
            for column, shown in zip(header[2:], row[2:], strict=True):
                if column == "oracle":
                    continue
                part, protocol = ("val", "honest") if column == "val" else ("test", column)
                stored = frame[
                    (frame.draw == draw)
                    & (frame["mode"] == mode)
                    & (frame.protocol == protocol)
                    & (frame.split_part == part)
                ].value
                assert shown == pct(float(stored.iloc[0])), (column, out)
    from bench.data.cards import load_card

    lines = out.splitlines()
    classes = lines[next(i for i, line in enumerate(lines) if "per-class test IoU" in line) :]
    for name in load_card("synthetic").class_names:
        assert any(line.split()[: len(name.split())] == name.split() for line in classes), name
    for column in [*header[2:], "finetune", "probe"]:  # every column explained in one line
        assert any(line.startswith(f"{column} ") for line in lines), column
