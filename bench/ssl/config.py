"""Settings of the shared pretraining loop, per method and profile (``--param`` overrides any)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the shared pretraining loop; every field can be overridden with ``--param``."""

    epochs: int = 100
    batch_size: int = 32
    view_size: int = 224
    steps_per_epoch: int = 0
    """0: one pass over the pool per epoch (pool size // batch size, at least 1)."""
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-6
    warmup_epochs: int = 0
    schedule: str = "cosine"
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0: off)."""
    bn_views: str = "separate"
    """BatchNorm over the views: ``separate`` passes (as the seeds) or one ``concat`` pass."""
    pool_limit: int = 0
    """Use only the first N pool images (0: all)."""


ENGINE_FIELDS = {f.name for f in dataclasses.fields(PretrainConfig)}
