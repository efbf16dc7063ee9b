"""The working scale: which scale a run works at, and images and masks brought to it.

A card declares its working scale (``[scale] working``, native by default); a run's rule picks one:

- ``card``: the card's declared scale;
- ``native``: native pixels;
- ``protocol:NAME``: the resize of the card's protocol ``NAME`` (native when it has none), so a
  protocol that evaluates at a resize is trained at that resize;
- ``HxW``: every image resized to ``H×W``.

Pretraining views, fine-tuning crops and evaluation all work at the resolved scale. Images are
resized bilinearly with antialiasing, masks by nearest neighbour; the aspect ratio is not kept
(as the MatSSL seed's ``Resize``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.errors import BenchError
from bench.data.cards import NATIVE, DatasetCard, ScaleSpec
from bench.data.images import LabeledImage

SCALE_RULES = "card, native, protocol:NAME or HxW"


def resolve_scale(card: DatasetCard, rule: str) -> ScaleSpec:
    """The working scale ``rule`` names for ``card``; a bad rule is a BenchError."""
    if rule == "card":
        return card.scale
    if rule == "native":
        return NATIVE
    if rule.startswith("protocol:"):
        name = rule.removeprefix("protocol:")
        if name not in card.protocols:
            return card.scale  # a card without that protocol keeps its own scale
        resize = card.protocol(name).resize
        return ScaleSpec(resize) if resize is not None else NATIVE
    return _fixed(rule)


def check_rule(rule: str) -> None:
    """A BenchError unless ``rule`` is a scale rule (module docstring)."""
    if rule in ("card", "native") or (rule.startswith("protocol:") and rule != "protocol:"):
        return
    _fixed(rule)


def _fixed(rule: str) -> ScaleSpec:
    height, sep, width = rule.partition("x")
    if sep and height.isdigit() and width.isdigit() and min(int(height), int(width)) >= 32:
        return ScaleSpec((int(height), int(width)))
    raise BenchError(f"scale '{rule}' is not one of {SCALE_RULES} (H, W ≥ 32)")


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 ``H×W`` image resized to ``size`` (bilinear, antialiased)."""
    if image.shape == size:
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).float()[None, None]
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return y[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class-id mask resized to ``size`` by nearest neighbour."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy().astype(np.uint8)


def to_scale(image: np.ndarray, scale: ScaleSpec) -> np.ndarray:
    """``image`` at the working scale."""
    return image if scale.resize is None else resize_image(image, scale.resize)


def labeled_at_scale(items: list[LabeledImage], scale: ScaleSpec) -> list[LabeledImage]:
    """Labeled images (image and mask) at the working scale."""
    if scale.resize is None:
        return items
    size = scale.resize
    return [
        LabeledImage(i.stem, resize_image(i.image, size), resize_mask(i.mask, size)) for i in items
    ]
