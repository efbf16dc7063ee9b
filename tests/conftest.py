"""Shared fixtures: the real data, a throw-away results store and an in-process CLI runner.

Every test runs with ``BENCH_CACHE_DIR`` and ``BENCH_STORE`` pointing into its own ``tmp_path`` (and
without ``BENCH_DATA_ROOT``), so no test writes into the repository's ``results/`` or depends on
the developer's environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.paths import SHARED_DATA_ENV, shared_data_path

# The test machines have 2 CPU cores shared between developers. With 2 OpenMP threads per
# process, torch's kernels spin-wait against other processes and run 10-40x slower; one thread
# keeps the few tests that train fast. Must be set before torch is first imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets: ``$BENCH_SHARED_DATA``, else ``<repo>/../shared/data``."""
    path = shared_data_path()
    if not (path / "metaldam").is_dir() or not (path / "nasa_micronet" / "EBC").is_dir():
        pytest.skip(
            f"real datasets not found at {path} (need metaldam/ and nasa_micronet/EBC/ there); "
            f"set {SHARED_DATA_ENV} to the shared data folder to run this test"
        )
    return path


@pytest.fixture
def tmp_store_url(tmp_path: Path) -> str:
    """A SQLite results store in this test's tmp folder."""
    return f"sqlite:///{tmp_path / 'store' / 'bench.sqlite'}"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tmp_store_url: str) -> None:
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_STORE", tmp_store_url)
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``cli(argv)`` runs ``bench.cli.main(argv)`` in-process; returns (exit code, stdout, stderr).

    argparse's ``SystemExit`` (``--help``, usage errors) becomes the exit code. Rich renders at a
    fixed, wide width so table rows are not wrapped.
    """
    from bench.cli import main
    from bench.core import console as consoles

    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(consoles.console, "width", 250)  # fixed at import when not a terminal

    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
