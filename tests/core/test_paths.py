"""One results folder: chosen once, holding the store, cache, studies and tables, never the cwd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core import paths
from bench.sweeps.studies import default_storage_url
from bench.sweeps.tune import tuned_dir
from tests.helpers.paths import REPO as REPO_ROOT


@pytest.fixture
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BENCH_RESULTS", "BENCH_STORE", "BENCH_CACHE_DIR", "BENCH_OPTUNA_STORAGE"):
        monkeypatch.delenv(name, raising=False)


def test_a_checkout_keeps_everything_in_its_results_folder(
    no_overrides: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the current folder plays no part
    results = REPO_ROOT / "results"
    assert paths.is_checkout() and paths.results_dir() == results
    assert paths.default_store_url() == f"sqlite:///{results / 'bench.sqlite'}"
    assert paths.default_cache_dir() == results / "cache"
    assert default_storage_url(None) == f"sqlite:///{results / 'optuna.sqlite'}"


def test_results_env_moves_store_cache_studies_and_tuned_parameters(
    no_overrides: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "mine"))
    mine = tmp_path / "mine"
    assert paths.default_store_url() == f"sqlite:///{mine / 'bench.sqlite'}"
    assert paths.default_cache_dir() == mine / "cache"
    assert default_storage_url(None) == f"sqlite:///{mine / 'optuna.sqlite'}"
    assert tuned_dir(None) == mine / "tuned"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "shared-cache"))  # one part moved alone
    assert paths.default_cache_dir() == tmp_path / "shared-cache"


def test_an_installed_copy_uses_a_user_data_folder(
    no_overrides: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path / "site-packages")
    monkeypatch.setattr(paths, "is_checkout", lambda: False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))
    assert paths.results_dir() == tmp_path / "data-home" / "microssl-bench"


def test_results_dir_flag_reaches_the_store(no_overrides: None, tmp_path: Path) -> None:
    """``--results-dir`` puts the store and the tables there, started from another folder."""
    out = subprocess.run(
        [sys.executable, "-m", "bench", "leaderboard", "--results-dir", str(tmp_path / "r")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )
    assert out.returncode == 2, out.stderr  # an empty store: a clear error, not a traceback
    assert "no succeeded runs" in out.stderr or "no runs" in out.stderr, out.stderr
    assert (tmp_path / "r" / "bench.sqlite").is_file()
    assert not (tmp_path / "results").exists()
