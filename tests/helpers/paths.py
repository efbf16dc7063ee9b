"""Where the project and the team's shared data are, for tests at any depth."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA_ENV = "BENCH_SHARED_DATA"


def shared_data_path() -> Path:
    """``$BENCH_SHARED_DATA``, else ``<repo>/../shared/data`` (it may not exist)."""
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else REPO.parent / "shared" / "data"
