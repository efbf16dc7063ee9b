"""Run profiles: how big a run is. Methods scale their own pretraining by the profile name.

- ``smoke``: seconds; tests and CI.
- ``quick``: a 1-shot MetalDAM run on 2 CPU cores in minutes (ResNet-18 U-Net, small crops).
- ``standard``: the GPU default (ResNet-50 UNet++).
- ``paper``: the seed papers' fine-tuning settings (MatSSL: UNet++/ResNet-50, Adam 1e-4, 200
  full-batch steps, Dice loss; ImageNet-initialised encoders).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.errors import BenchError


@dataclass(frozen=True)
class FinetuneConfig:
    """Few-shot fine-tuning. The schedule counts optimizer steps, so 1 and 16 shots train equally long."""

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
    """Sliding-window tile for inference (0: the whole image at once, padded to a multiple of 32)."""


@dataclass(frozen=True)
class Profile:
    name: str
    finetune: FinetuneConfig
    default_init: str
    description: str


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke",
        FinetuneConfig(arch="unet", encoder="resnet18", steps=4, batch_size=2, crop=64,
                       lr=1e-3, warmup_steps=0, eval_every=4),
        "random",
        "seconds: tests and CI",
    ),
    "quick": Profile(
        "quick",
        FinetuneConfig(arch="unet", encoder="resnet18", steps=150, batch_size=4, crop=192,
                       lr=1e-3, warmup_steps=10, eval_every=50),
        "random",
        "minutes on 2 CPU cores: ResNet-18 U-Net, 150 steps of 192² crops",
    ),
    "standard": Profile(
        "standard",
        FinetuneConfig(),
        "random",
        "GPU default: ResNet-50 UNet++, 1000 steps of 8×256² crops",
    ),
    "paper": Profile(
        "paper",
        FinetuneConfig(steps=200, batch_size=8, crop=256, lr=1e-4, weight_decay=0.0,
                       warmup_steps=0, schedule="constant", loss="dice", eval_every=10),
        "imagenet",
        "seed papers' settings: UNet++/ResNet-50, Adam 1e-4 constant, 200 steps, Dice loss",
    ),
}

ARCHS = ("unetplusplus", "unet")
ENCODERS = ("resnet18", "resnet34", "resnet50")


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise BenchError(f"unknown profile '{name}'; profiles: {', '.join(PROFILES)}")
    return PROFILES[name]


def finetune_config(profile: Profile, **overrides: object) -> FinetuneConfig:
    """The profile's fine-tuning config with CLI overrides (None values are ignored)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    cfg = dataclasses.replace(profile.finetune, **changes)
    if cfg.arch not in ARCHS:
        raise BenchError(f"unknown --arch '{cfg.arch}'; choose from {', '.join(ARCHS)}")
    if cfg.encoder not in ENCODERS:
        raise BenchError(f"unknown --encoder '{cfg.encoder}'; choose from {', '.join(ENCODERS)}")
    if cfg.steps < 1 or cfg.eval_every < 1 or cfg.batch_size < 1:
        raise BenchError("--steps, --eval-every and --batch-size must be ≥ 1")
    return cfg
