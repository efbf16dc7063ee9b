"""What identifies a result and where it came from: config hashes, library versions, git commit."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "lightly",
    "timm",
    "segmentation_models_pytorch",
    "optuna",
    "numpy",
)


def config_hash(config: dict[str, Any]) -> str:
    """First 16 hex digits of the sha256 of the config as canonical JSON."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def collect_versions() -> dict[str, str | None]:
    """Python and key library versions (None for a library that is not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """HEAD of the checkout holding this file, '-dirty' if tracked files changed; None if no git."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def _git(*args: str) -> str:
    here = Path(__file__).resolve().parent
    done = subprocess.run(
        ["git", *args], cwd=here, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()
