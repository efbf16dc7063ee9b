"""Inference and evaluation at native resolution (or at a protocol's resize).

``predict`` labels one image: the whole image padded to a multiple of 32, or overlapping
``tile``-sized windows whose logits are averaged. The model sees the image at the working scale
(``working``: resized, its logits resized back to the native size, so scores are always against
the native masks); a protocol with a resize feeds and scores at that size instead. ``evaluate``
accumulates one confusion matrix per evaluation resolution over a whole image set and scores every
protocol from it. Images are fed one at a time: on a CPU a batch of 4 whole MetalDAM images
(704×1024) costs as much per image in fp32 and 27 % more in bf16 (measured, 1 thread, CPU time).

Precision (``bench.core.precision``): the network's forward pass runs at the run's precision (bf16
autocast + channels_last, or fp32); its logits are cast to fp32 before resizing and argmax, and
the confusion matrices and every metric are exact integer counts and float64 ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.precision import Precision, resolve_precision
from bench.data.cards import DatasetCard, ProtocolSpec
from bench.data.images import LabeledImage
from bench.finetune.metrics import (
    ConfusionMatrix,
    Summary,
    merge_classes,
    protocol_score,
    summarize,
)
from bench.models.inputs import normalize_uint8
from bench.models.scale import resize_mask


@torch.no_grad()
def predict(
    model: nn.Module,
    image: np.ndarray,
    device: torch.device,
    tile: int = 0,
    size: tuple[int, int] | None = None,
    working: tuple[int, int] | None = None,
    precision: Precision | None = None,
) -> np.ndarray:
    """Class ids for one grayscale image at native resolution, the model fed the image resized to
    ``working`` when given; or, with ``size``, fed and labelled at ``size``. The forward pass runs
    at ``precision`` (default fp32), the argmax over fp32 logits."""
    x = normalize_uint8(torch.from_numpy(image)[None].to(device))
    target = size or working
    if target is not None:
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
    if tile:
        logits = _sliding_logits(model, x, tile, precision)
    else:
        logits = _padded_logits(model, x, precision)
    if size is None and working is not None:
        logits = F.interpolate(logits, size=image.shape, mode="bilinear", align_corners=False)
    return class_ids(logits)[0].cpu().numpy().astype(np.uint8)


def class_ids(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel class ids of ``N×C×H×W`` logits: ``max(1).indices``, which equals
    ``argmax(1)`` (the first maximum on ties, NaN as the maximum) but is several times faster on a
    CPU, where argmax over the channel dimension is slow (a 5×704×1024 map: 237 ms against 32 ms,
    1 thread, torch 2.14)."""
    return logits.max(1).indices


def forward_logits(
    model: nn.Module, x: torch.Tensor, precision: Precision | None = None
) -> torch.Tensor:
    """The model's fp32 logits for a normalised batch, the forward pass at ``precision`` (default
    fp32; bf16: autocast, the input in channels_last)."""
    precision = precision or resolve_precision("fp32", x.device)
    with precision.autocast():
        logits = model(precision.input(x))
    return logits.float()


def _padded_logits(
    model: nn.Module, x: torch.Tensor, precision: Precision | None = None
) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 32, (-w) % 32
    mode = "reflect" if ph < h and pw < w else "replicate"
    return forward_logits(model, F.pad(x, (0, pw, 0, ph), mode=mode), precision)[..., :h, :w]


def _sliding_logits(
    model: nn.Module, x: torch.Tensor, tile: int, precision: Precision | None = None
) -> torch.Tensor:
    """Average logits of overlapping ``tile``-sized windows (stride tile/2) covering the image."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return _padded_logits(model, x, precision)
    stride = tile // 2
    tops = _window_starts(h, tile, stride)
    lefts = _window_starts(w, tile, stride)
    total = count = None
    for top in tops:
        for left in lefts:
            window = x[..., top : top + tile, left : left + tile]
            logits = _padded_logits(model, window, precision)
            if total is None:
                total = x.new_zeros((1, logits.shape[1], h, w))
                count = x.new_zeros((1, 1, h, w))
            total[..., top : top + tile, left : left + tile] += logits
            count[..., top : top + tile, left : left + tile] += 1
    return total / count


def _window_starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


@dataclass
class ProtocolResult:
    score: float
    summary: Summary


def evaluate(
    model: nn.Module,
    images: list[LabeledImage],
    card: DatasetCard,
    protocols: list[ProtocolSpec],
    device: torch.device,
    tile: int,
    keep: dict[str, np.ndarray] | None = None,
    working: tuple[int, int] | None = None,
    precision: Precision | None = None,
) -> dict[str, ProtocolResult]:
    """Score every protocol from one confusion matrix per evaluation resolution.

    Each matrix is accumulated over the whole image set (not averaged per image); protocols at the
    same resolution share the same predictions. Native-resolution predictions of images whose stem
    is a key of ``keep`` are stored there. ``working``: the working scale's resize (``predict``).
    """
    matrices: dict[tuple[int, int] | None, np.ndarray] = {}
    precision = precision or resolve_precision("fp32", device)
    with precision.autocast():  # one region: bf16 weight copies are made once, not per image
        for size in dict.fromkeys(p.resize for p in protocols):
            matrices[size] = _confusion(
                model, images, card, size, device, tile, keep, working, precision
            )
    return protocol_results(matrices, card, protocols)


def _confusion(
    model: nn.Module,
    images: list[LabeledImage],
    card: DatasetCard,
    size: tuple[int, int] | None,
    device: torch.device,
    tile: int,
    keep: dict[str, np.ndarray] | None,
    working: tuple[int, int] | None,
    precision: Precision,
) -> np.ndarray:
    """The confusion matrix of ``images`` predicted at ``size`` (None: native resolution)."""
    cm = ConfusionMatrix(card.num_classes)
    for item in images:
        if size is None:
            pred = predict(model, item.image, device, tile, None, working, precision)
            if keep is not None and item.stem in keep:
                keep[item.stem] = pred
            cm.update(pred, item.mask)
        else:
            pred = predict(model, item.image, device, 0, size, None, precision)
            cm.update(pred, resize_mask(item.mask, size))
    return cm.matrix


def protocol_results(
    matrices: dict[tuple[int, int] | None, np.ndarray],
    card: DatasetCard,
    protocols: list[ProtocolSpec],
) -> dict[str, ProtocolResult]:
    """Every protocol's score and summary from the confusion matrix of its evaluation resolution
    (``matrices`` keyed by resize, None = native)."""
    results = {}
    for spec in protocols:
        cm = matrices[spec.resize]
        merged = merge_classes(cm, spec.merge) if spec.merge else cm
        results[spec.name] = ProtocolResult(
            protocol_score(cm, spec, card.background), summarize(merged, card.background)
        )
    return results
