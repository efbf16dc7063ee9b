"""Where cached artefacts (pretrained encoders, checkpoints) live."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "BENCH_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR``, else ``results/cache`` (share it between machines of a sweep)."""
    return Path(os.environ.get(CACHE_ENV) or "results/cache")
