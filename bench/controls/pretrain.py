"""The controls' pretraining: supervised segmentation of a labeled pool, encoder kept.

The encoder (an smp ResNet from given starting weights) and a linear head of the probe's kind
(``bench.finetune.probe.LinearProbe``: a 1×1 convolution per stage, summed at stride 4) are
trained together with cross-entropy against the masks, upsampled logits, on random square crops of
the pool images with random flips and 90° rotations; AdamW, cosine schedule. Only the encoder is
kept. The same recipe with the same budget runs on every pool a control compares (structured or
noise), from the same starting weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.console import progress
from bench.data.images import LabeledImage
from bench.finetune.probe import STAGES, LinearProbe
from bench.models.encoders import EncoderState, encoder_channels
from bench.models.inputs import normalize_uint8

DESCRIPTION = (
    "supervised segmentation of the pool's images (encoder + per-stage 1×1 convolutions summed at "
    "stride 4, cross-entropy on upsampled logits; random crops at the images' own scale, flips, "
    "90° rotations; AdamW, cosine schedule), encoder kept; the same budget and starting weights "
    "for every pool"
)


@dataclass(frozen=True)
class PretrainSettings:
    """The budget every control's pretraining gets."""

    steps: int = 150
    batch_size: int = 8
    crop: int = 64
    """Side of the square crops, pixels (the images' own scale: no zoom)."""
    lr: float = 1e-3
    weight_decay: float = 1e-4


def pretrain_supervised(
    encoder: nn.Module,
    pool: list[LabeledImage],
    num_classes: int,
    settings: PretrainSettings,
    seed: int,
    label: str,
) -> EncoderState:
    """A trained copy of ``encoder``'s weights (``encoder`` itself is left unchanged)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(encoder).train()
    head = LinearProbe(encoder_channels(model), num_classes)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / settings.steps))
    )
    images = torch.from_numpy(np.stack([item.image for item in pool]))
    masks = torch.from_numpy(np.stack([item.mask for item in pool]).astype(np.int64))
    rng = np.random.default_rng(seed)
    order = epoch_order(len(pool), settings.steps * settings.batch_size, rng)
    with progress("loss") as bar:
        task = bar.add_task(label, total=settings.steps, loss="")
        for step in range(settings.steps):
            batch = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            x, y = random_crops(images, masks, batch, settings.crop, rng)
            features = model(normalize_uint8(x))[2 : 2 + STAGES]
            logits = F.interpolate(head(features), size=y.shape[-2:], mode="bilinear")
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            value = loss.item()
            if not math.isfinite(value):
                raise ValueError(f"{label}: pretraining loss became {value}")
            bar.update(task, advance=1, loss=f"loss {value:.3f}")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def epoch_order(pool_size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` pool indices, epoch after epoch, each epoch a fresh permutation: every image is
    used once before any is used again (a pool of ``steps × batch_size`` images: each once)."""
    epochs = -(-count // pool_size)
    return np.concatenate([rng.permutation(pool_size) for _ in range(epochs)])[:count]


def random_crops(
    images: torch.Tensor,
    masks: torch.Tensor,
    indices: np.ndarray,
    side: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned ``side``² crops of the images (``N×H×W``) at ``indices``, each at a random place,
    flipped and turned by a random multiple of 90°."""
    _, h, w = images.shape
    if side > min(h, w):
        raise ValueError(f"crop side {side} exceeds the {h}×{w} images")
    xs, ys = [], []
    for i in indices:
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        x = images[i, top : top + side, left : left + side]
        y = masks[i, top : top + side, left : left + side]
        turns = int(rng.integers(0, 4))
        x, y = torch.rot90(x, turns), torch.rot90(y, turns)
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs).contiguous(), torch.stack(ys).contiguous()
