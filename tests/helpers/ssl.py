"""Shared helpers for SSL method tests: a context and a pool on the synthetic card."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.data.cards import load_card
from bench.data.pool import load_pool
from bench.ssl.augment import ImagePool
from bench.ssl.method import EncoderContext


def synthetic_context(tmp_path: Path, encoder: str = "resnet18", **kw) -> EncoderContext:
    return EncoderContext(
        card=load_card("synthetic"),
        data_root=Path("."),
        encoder=encoder,
        init="random",
        profile="smoke",
        seed=0,
        device=torch.device("cpu"),
        cache_dir=tmp_path,
        **kw,
    )


def synthetic_pool(count: int = 16) -> ImagePool:
    return ImagePool(load_pool(load_card("synthetic"), Path("."), count), torch.device("cpu"))
