"""The resume checkpoint of a pretraining in progress: written atomically, read without pickle code.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers, so a planted or
corrupt file can never run code; it is refused as a ``BadCheckpoint`` and the pretraining starts
over (``bench.ssl.engine``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"
KEYS = ("step", "model", "optimizer", "scheduler", "generator", "losses")


class BadCheckpoint(Exception):
    """A checkpoint that cannot be read safely (the message says why)."""


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, folder / CHECKPOINT_FILE)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, read with ``weights_only=True``; ``BadCheckpoint`` otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise BadCheckpoint(f"refused: not a weights-only checkpoint ({_reason(exc)})") from None
    except Exception as exc:  # any failure to parse untrusted bytes (IndexError, struct.error...)
        raise BadCheckpoint(f"unreadable: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        raise BadCheckpoint(f"not a pretraining checkpoint (needs {', '.join(KEYS)})")
    return state


def _reason(exc: Exception) -> str:
    """The informative line of torch's weights-only refusal (e.g. the global it would have had to
    import), without its boilerplate."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines if not line.startswith(boilerplate)]
    return (detail or lines or [type(exc).__name__])[0][:160]
