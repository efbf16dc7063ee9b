"""Settings of the shared pretraining loop, per method and profile (``--param`` overrides any).

Budgets are optimizer steps, whatever the pool size: a step is one batch of ``batch_size`` pool
images, each seen in the method's views (``views seen = steps × batch_size × views per image``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ENGINE_VERSION = 3
"""Bumped when the loop's semantics change (crop sampling, batch composition...; 3: under bf16 the
contrastive losses normalise the embeddings in float32); part of every pretraining's cache key, so
an encoder from an older engine is never reused."""

CROPS = ("working", "image")


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the shared pretraining loop; every field can be overridden with ``--param``."""

    steps: int = 5000
    """Optimizer steps of the whole pretraining."""
    batch_size: int = 32
    """Pool images per step (methods that add the labeled shots add them on top)."""
    view_size: int = 224
    """Side of a view in view pixels."""
    crop: str = "working"
    """``working``: a view covers a box of ``view_size · z`` working pixels per side, zoom
    ``z ∈ [zoom_min, zoom_max]`` (area drawn uniformly in that range), so a view pixel is a
    fine-tuning pixel up to the zoom; ``image``: the method's own random-resized-crop area range,
    as a fraction of the whole (working-scale) image, as torchvision draws it."""
    zoom_min: float = 0.8
    zoom_max: float = 1.25
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-6
    warmup_steps: int = 0
    schedule: str = "cosine"
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0: off)."""
    bn_views: str = "separate"
    """BatchNorm over the views: ``separate`` passes (as the seeds) or one ``concat`` pass."""
    pool_limit: int = 0
    """Use only the first N pool images (0: all)."""


ENGINE_FIELDS = {f.name for f in dataclasses.fields(PretrainConfig)}

_MATSSL_PAPER = PretrainConfig(steps=5000, batch_size=32, view_size=224, crop="image")
_PSCL_PAPER = PretrainConfig(
    steps=4800,
    batch_size=8,
    view_size=384,
    optimizer="adam",
    lr=1e-4,
    weight_decay=0.0,
    schedule="constant",
)


def matssl_paper(**settings: Any) -> PretrainConfig:
    """The MatSSL seed's pretraining budget and views (``shared/reference/matssl.md`` §2, §1.4):
    batch 32 (``train_ssl.py`` default), 224² views cut from the whole image by a random resized
    crop of the image's area (``crop = "image"``), 100 epochs. The seed's SSL folder (Aachen +
    UHCS + MetalDAM) has no published size; UHCS (≈ 961 images) and MetalDAM's 164 alone make 35
    steps per epoch at batch 32, ≥ 3,500 steps in 100 epochs: the profile takes 5,000 (160,000
    images, 320,000 views). ``settings``:
    the method's optimizer and anything else it changes."""
    return dataclasses.replace(_MATSSL_PAPER, **settings)


def pscl_paper(**settings: Any) -> PretrainConfig:
    """The PSCL seed's pretraining schedule (``shared/reference/pscl.md`` §1.9, §2): Adam 1e-4, no
    weight decay, constant LR, batch 8 unlabeled images (+ the shot for PSCL), 200 epochs of its
    training folder. The folder's size is not published; all 198 images at batch 8 with
    ``drop_last`` give 24 steps per epoch, so the profile takes that bound: 4,800 steps. Views of
    384² working pixels (the seed's 376² tiles, rounded up to a multiple of 32 for the U-Net)."""
    return dataclasses.replace(_PSCL_PAPER, **settings)
