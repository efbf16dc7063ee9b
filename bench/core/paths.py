"""Where the project and its local state live: the checkout, the results folder and what it holds.

One results folder holds the store, the pretraining cache, sweep studies, tuned parameters and
published tables: ``--results-dir`` / ``$BENCH_RESULTS``, else the checkout's ``results/`` when
the project runs from a checkout, else a per-user data folder. Never the current directory, so a
command gives the same answer from wherever it is started. ``$BENCH_STORE`` and
``$BENCH_CACHE_DIR`` (or ``--store`` / ``--cache-dir``) still move one of them elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding ``bench/``, ``methods/`` and ``datasets/`` (checkout or site-packages)."""
RESULTS_ENV = "BENCH_RESULTS"
CACHE_ENV = "BENCH_CACHE_DIR"


def is_checkout(root: Path = PROJECT_ROOT) -> bool:
    """Whether ``root`` is a source checkout (an installed wheel has no ``pyproject.toml``)."""
    return (root / "pyproject.toml").is_file() and (root / "bench").is_dir()


def results_dir() -> Path:
    """``$BENCH_RESULTS``, else ``<checkout>/results``, else ``$XDG_DATA_HOME/microssl-bench``."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV]).expanduser().resolve()
    if is_checkout():
        return PROJECT_ROOT / "results"
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "microssl-bench"


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR``, else ``<results>/cache`` (share it between machines of a sweep)."""
    explicit = os.environ.get(CACHE_ENV)
    return Path(explicit) if explicit else results_dir() / "cache"


def default_store_url() -> str:
    """``$BENCH_STORE``, else a SQLite file in the results folder."""
    return os.environ.get("BENCH_STORE") or f"sqlite:///{results_dir() / 'bench.sqlite'}"
