"""Few-shot fine-tuning settings (one frozen dataclass; profiles hold one each)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.core.errors import BenchError
from bench.core.schedules import SCHEDULES
from bench.finetune.losses import LOSSES
from bench.models.segmenter import ARCHS, ENCODERS


@dataclass(frozen=True)
class FinetuneConfig:
    """Few-shot fine-tuning; the schedule counts optimizer steps (1 and 16 shots train as long)."""

    arch: str = "unetplusplus"
    encoder: str = "resnet50"
    steps: int = 1000
    batch_size: int = 8
    crop: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: str = "cosine"
    loss: str = "ce+dice"
    eval_every: int = 100
    tile: int = 0
    """Sliding-window tile for inference (0: the whole image, padded to a multiple of 32)."""


def with_overrides(cfg: FinetuneConfig, **overrides: object) -> FinetuneConfig:
    """``cfg`` with CLI overrides (None values are ignored), validated."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    cfg = dataclasses.replace(cfg, **changes)
    if cfg.arch not in ARCHS:
        raise BenchError(f"unknown --arch '{cfg.arch}'; choose from {', '.join(ARCHS)}")
    if cfg.encoder not in ENCODERS:
        raise BenchError(f"unknown --encoder '{cfg.encoder}'; choose from {', '.join(ENCODERS)}")
    if cfg.steps < 1 or cfg.eval_every < 1 or cfg.batch_size < 1:
        raise BenchError("--steps, --eval-every and --batch-size must be ≥ 1")
    if cfg.loss not in LOSSES:
        raise BenchError(f"unknown fine-tuning loss '{cfg.loss}'; choose from {', '.join(LOSSES)}")
    if cfg.schedule not in SCHEDULES:
        raise BenchError(f"unknown schedule '{cfg.schedule}'; choose from {', '.join(SCHEDULES)}")
    return cfg
