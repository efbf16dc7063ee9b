"""Where the project and its local state live: the checkout, the pretraining cache."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding ``bench/``, ``methods/`` and ``datasets/`` (checkout or site-packages)."""
CACHE_ENV = "BENCH_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR``, else ``results/cache`` (share it between machines of a sweep)."""
    return Path(os.environ.get(CACHE_ENV) or "results/cache")
