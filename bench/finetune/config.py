"""Few-shot fine-tuning settings (one frozen dataclass; profiles hold one each)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.core.errors import BenchError
from bench.core.schedules import SCHEDULES
from bench.finetune.losses import LOSSES
from bench.models.scale import check_rule
from bench.models.segmenter import ARCHS, ENCODERS

BATCHINGS = ("random", "epoch")


@dataclass(frozen=True)
class FinetuneConfig:
    """Few-shot fine-tuning; the schedule counts optimizer steps (1 and 16 shots train as long)."""

    arch: str = "unetplusplus"
    encoder: str = "resnet50"
    steps: int = 1000
    batch_size: int = 8
    crop: int = 256
    """Side of the random training crops in working pixels (0: whole images, which must then all
    have one size, e.g. at a resize scale)."""
    augment: bool = True
    """Random flips and 90° rotations of the training crops."""
    jitter: float = 0.0
    """Brightness/contrast jitter strength of the training crops, with p = 0.8 (0: none)."""
    batching: str = "random"
    """``random``: each batch draws its images at random; ``epoch``: batches walk through a
    shuffled order of the shots (a batch ≥ the shots holds every shot: one step per epoch)."""
    lr: float = 3e-4
    """Learning rate of the parts that start random (all of them without pretrained weights)."""
    pretrained_lr: float = 0.0
    """Learning rate of the pretrained parts (encoder, and decoder when pretrained); 0: ``lr``."""
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: str = "cosine"
    loss: str = "ce+dice"
    rare_share: float = 0.1
    rare_weight: float = 10.0
    """``wce+fgdice``: cross-entropy weight of classes below ``rare_share`` of the shots' pixels."""
    eval_every: int = 100
    tile: int = 0
    """Sliding-window tile for inference (0: the whole image, padded to a multiple of 32)."""
    scale: str = "card"
    """The working scale of pretraining, fine-tuning and evaluation (``bench.models.scale``)."""


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
    if cfg.crop < 0 or cfg.jitter < 0 or cfg.lr <= 0 or cfg.pretrained_lr < 0:
        raise BenchError("--crop, jitter and pretrained_lr must be ≥ 0 and --lr > 0")
    if cfg.loss not in LOSSES:
        raise BenchError(f"unknown fine-tuning loss '{cfg.loss}'; choose from {', '.join(LOSSES)}")
    if cfg.schedule not in SCHEDULES:
        raise BenchError(f"unknown schedule '{cfg.schedule}'; choose from {', '.join(SCHEDULES)}")
    if cfg.batching not in BATCHINGS:
        raise BenchError(f"batching must be one of {', '.join(BATCHINGS)}, got '{cfg.batching}'")
    check_rule(cfg.scale)
    return cfg
