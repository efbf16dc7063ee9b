"""How much work one ``bench perf`` run does, per perf profile (recorded in the JSON)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.cpus import cpu_count

PERF_PROFILES = ("smoke", "standard")


@dataclass(frozen=True)
class PerfSizes:
    """Everything that sets how much work one perf run does (recorded in the JSON)."""

    # SSL engine and seed loop
    ssl_encoder: str = "resnet50"
    batch: int = 128
    view_size: int = 224
    warmup: int = 3
    steps: int = 10
    pool_images: int = 0
    """Unlabeled images in the pool and the seed loop's file list (0: all)."""
    seed_workers: int = -1
    """DataLoader workers of the seed loop (-1: the seed's 4, capped at the CPU count)."""
    # synthetic ResNet-50 ceiling
    ceiling_batch: int = 256
    ceiling_size: int = 224
    ceiling_warmup: int = 5
    ceiling_steps: int = 20
    # few-shot fine-tuning
    ft_arch: str = "unetplusplus"
    ft_encoder: str = "resnet50"
    ft_crop: int = 256
    ft_max_batch: int = 8
    ft_shots: tuple[int, ...] = (1, 4, 16)
    ft_warmup: int = 3
    ft_steps: int = 20
    # evaluation (bench.finetune.inference.evaluate, native resolution)
    eval_images: int = 8
    eval_warmup: int = 1
    eval_passes: int = 3
    # concurrent seed-style fine-tunes
    agg_procs: tuple[int, ...] = (1, 4, 8)
    agg_size: int = 256
    agg_val_images: int = 8
    agg_warmup: int = 2
    agg_seconds: float = 20.0


def sizes_for(profile: str, device: torch.device) -> PerfSizes:
    """``standard``: the GPU-sized benchmark; ``smoke``: minutes on a 2-core CPU."""
    if profile == "standard":
        procs = (1, 4, 8) if device.type == "cuda" else _cpu_procs()
        return PerfSizes(agg_procs=procs)
    if profile == "smoke":
        procs = (1, 4, 8) if device.type == "cuda" else _cpu_procs()
        return PerfSizes(
            batch=8,
            view_size=64,
            warmup=1,
            steps=4,
            pool_images=32,
            ceiling_batch=8,
            ceiling_size=64,
            ceiling_warmup=1,
            ceiling_steps=4,
            ft_arch="unet",
            ft_encoder="resnet18",
            ft_crop=128,
            ft_warmup=1,
            ft_steps=5,
            eval_images=2,
            eval_passes=1,
            agg_procs=procs,
            agg_warmup=1,
            agg_seconds=6.0,
        )
    raise ValueError(f"unknown perf profile '{profile}'; choose {', '.join(PERF_PROFILES)}")


def _cpu_procs() -> tuple[int, ...]:
    return (1, 2) if cpu_count() >= 2 else (1,)
