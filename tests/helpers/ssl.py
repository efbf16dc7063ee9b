"""Shared helpers for SSL method tests: a synthetic pool, a context, a short training loop."""

from __future__ import annotations

from pathlib import Path

import torch
from segmentation_models_pytorch.encoders import get_encoder

from bench.data.cards import load_card
from bench.data.pool import load_pool
from bench.ssl.augment import ImagePool
from bench.ssl.base import SSLMethod
from bench.ssl.config import PretrainConfig
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


def train_losses(
    method: SSLMethod,
    ctx: EncoderContext,
    cfg: PretrainConfig,
    steps: int,
    lr: float = 0.05,
    batch: int = 8,
    seed: int = 0,
) -> list[float]:
    """Train a fresh model on a FIXED batch of the synthetic pool; returns the loss per step."""
    torch.manual_seed(seed)
    model = method.build_model(get_encoder(ctx.encoder, weights=None), ctx, cfg)
    pool = synthetic_pool()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    index = torch.arange(batch) % len(pool)
    losses = []
    for step in range(steps):
        generator = torch.Generator().manual_seed(step % 4)
        loss = model.training_loss(pool, index, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step((step + 1) / steps)
        losses.append(loss.item())
    return losses
