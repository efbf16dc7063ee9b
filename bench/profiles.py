"""Run profiles: how big a run is. Methods scale their own pretraining by the profile name.

- ``smoke``: seconds; tests and CI.
- ``quick``: a 1-shot MetalDAM run on 2 CPU cores in minutes (ResNet-18 U-Net, small crops).
- ``standard``: the GPU default (ResNet-50 UNet++).
- ``matssl-paper``: the MatSSL seed's fine-tuning (``shared/reference/matssl.md`` §3): UNet++ /
  ResNet-50 from ImageNet, whole images at the protocol's resize (256² MetalDAM, 512² EBC), no
  augmentation, every shot in one batch (batch 128: one step per epoch), Adam 1e-4 constant, no
  weight decay, 200 steps, soft Dice over all classes, evaluated every step.
- ``pscl-paper``: the PSCL seed's fine-tuning (``shared/reference/pscl.md`` §3): a random-init
  U-Net (ResNet-18 here), 384² tiles at native scale (its 376² images), flips, rot90 and
  brightness/contrast jitter 0.08, batch 1, 1000 steps, Adam with 1e-4 for the pretrained parts
  and 1e-3 for the rest, no weight decay or schedule, 0.5 × weighted CE + 0.5 × foreground Dice,
  evaluated every 200 steps.

Selection is always on validation; the seeds selected on test, which the stored oracle reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.core.errors import BenchError
from bench.finetune.config import FinetuneConfig, with_overrides
from bench.finetune.probe import ProbeConfig


@dataclass(frozen=True)
class Profile:
    name: str
    finetune: FinetuneConfig
    default_init: str
    description: str
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """The frozen-encoder probe's schedule (the second evaluation mode)."""


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
        ProbeConfig(steps=20, eval_every=10),
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
    "matssl-paper": Profile(
        "matssl-paper",
        FinetuneConfig(
            arch="unetplusplus",
            encoder="resnet50",
            steps=200,
            batch_size=128,
            crop=0,
            augment=False,
            batching="epoch",
            lr=1e-4,
            weight_decay=0.0,
            warmup_steps=0,
            schedule="constant",
            loss="dice",
            eval_every=1,
            scale="protocol:matssl-paper",
        ),
        "imagenet",
        "MatSSL seed: UNet++/ResNet-50 from ImageNet, whole images at the protocol's resize, "
        "full batch, Adam 1e-4, 200 steps, Dice",
    ),
    "pscl-paper": Profile(
        "pscl-paper",
        FinetuneConfig(
            arch="unet",
            encoder="resnet18",
            steps=1000,
            batch_size=1,
            crop=384,
            jitter=0.08,
            lr=1e-3,
            pretrained_lr=1e-4,
            weight_decay=0.0,
            warmup_steps=0,
            schedule="constant",
            loss="wce+fgdice",
            eval_every=200,
        ),
        "random",
        "PSCL seed: random-init U-Net, 384² tiles, batch 1, 1000 steps, Adam 1e-4/1e-3, "
        "weighted CE + foreground Dice",
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise BenchError(f"unknown profile '{name}'; profiles: {', '.join(PROFILES)}")
    return PROFILES[name]


def finetune_config(profile: Profile, **overrides: object) -> FinetuneConfig:
    """The profile's fine-tuning config with CLI overrides (None values are ignored)."""
    return with_overrides(profile.finetune, **overrides)
