"""Run profiles: how big a run is. Methods scale their own pretraining by the profile name.

- ``smoke``: seconds; tests and CI.
- ``quick``: a 1-shot MetalDAM run on 2 CPU cores in minutes (ResNet-18 U-Net, small crops).
- ``standard``: the GPU default (ResNet-50 UNet++).
- ``paper``: the seed papers' fine-tuning settings (MatSSL: UNet++/ResNet-50, Adam 1e-4, 200
  full-batch steps, Dice loss; ImageNet-initialised encoders).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.errors import BenchError
from bench.finetune.config import FinetuneConfig, with_overrides


@dataclass(frozen=True)
class Profile:
    name: str
    finetune: FinetuneConfig
    default_init: str
    description: str


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke",
        FinetuneConfig(
            arch="unet",
            encoder="resnet18",
            steps=4,
            batch_size=2,
            crop=64,
            lr=1e-3,
            warmup_steps=0,
            eval_every=4,
        ),
        "random",
        "seconds: tests and CI",
    ),
    "quick": Profile(
        "quick",
        FinetuneConfig(
            arch="unet",
            encoder="resnet18",
            steps=150,
            batch_size=4,
            crop=192,
            lr=1e-3,
            warmup_steps=10,
            eval_every=50,
        ),
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
        FinetuneConfig(
            steps=200,
            batch_size=8,
            crop=256,
            lr=1e-4,
            weight_decay=0.0,
            warmup_steps=0,
            schedule="constant",
            loss="dice",
            eval_every=10,
        ),
        "imagenet",
        "seed papers' settings: UNet++/ResNet-50, Adam 1e-4 constant, 200 steps, Dice loss",
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise BenchError(f"unknown profile '{name}'; profiles: {', '.join(PROFILES)}")
    return PROFILES[name]


def finetune_config(profile: Profile, **overrides: object) -> FinetuneConfig:
    """The profile's fine-tuning config with CLI overrides (None values are ignored)."""
    return with_overrides(profile.finetune, **overrides)
