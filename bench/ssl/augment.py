"""Batched view augmentation on the training device (GPU when present).

The unlabeled pool lives on the device as one padded uint8 tensor; a batch of views is cut out with
one ``roi_align`` call (random resized crops, each sample its own box), then flips, 90° rotations,
brightness/contrast jitter and Gaussian blur are applied per sample on the whole batch. No PIL,
no worker processes. ``ViewBatch`` keeps each sample's crop box, flips and rotation so dense
methods can map feature cells between views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from bench.models.inputs import normalize_unit


@dataclass(frozen=True)
class ViewConfig:
    """One view's augmentation distribution (SimCLR-style defaults)."""

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0
    rot90: float = 0.0
    jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)


class ImagePool:
    """Grayscale images of different sizes, padded into one ``N×1×H×W`` uint8 tensor on ``device``.

    Padding repeats the edge pixels, so interpolation at a crop's border never mixes in zeros.
    """

    def __init__(self, images: list[np.ndarray], device: torch.device) -> None:
        if not images:
            raise ValueError("the image pool is empty")
        height = max(im.shape[0] for im in images)
        width = max(im.shape[1] for im in images)
        data = np.zeros((len(images), 1, height, width), dtype=np.uint8)
        for i, im in enumerate(images):
            pad = ((0, height - im.shape[0]), (0, width - im.shape[1]))
            data[i, 0] = np.pad(im, pad, mode="edge")
        self.data = torch.from_numpy(data).to(device)
        self.sizes = torch.tensor(
            [im.shape[:2] for im in images], dtype=torch.float32, device=device
        )
        self.device = device

    def __len__(self) -> int:
        return self.data.shape[0]


@dataclass
class ViewBatch:
    """Normalised 3-channel views plus the geometry that produced them."""

    images: torch.Tensor
    boxes: torch.Tensor
    """``B×4`` crop boxes (x1, y1, x2, y2) in source-image pixels."""
    hflip: torch.Tensor
    vflip: torch.Tensor
    rot90: torch.Tensor
    """``B`` int: number of counter-clockwise 90° turns applied after the crop."""


def sample_boxes(sizes: torch.Tensor, cfg: ViewConfig, generator: torch.Generator) -> torch.Tensor:
    """Random-resized-crop boxes: area fraction ~ U(scale), log aspect ratio ~ U(log ratio)."""
    n = sizes.shape[0]
    device = sizes.device
    h, w = sizes[:, 0], sizes[:, 1]
    area = h * w * _uniform(n, *cfg.scale, generator, device)
    log_r = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator, device)
    ratio = torch.exp(log_r)
    cw = torch.sqrt(area * ratio).clamp(max=w).clamp(min=1.0)
    ch = torch.sqrt(area / ratio).clamp(max=h).clamp(min=1.0)
    x1 = _uniform(n, 0.0, 1.0, generator, device) * (w - cw)
    y1 = _uniform(n, 0.0, 1.0, generator, device) * (h - ch)
    return torch.stack([x1, y1, x1 + cw, y1 + ch], dim=1)


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device).to(
        device
    )


def crop_resize(
    pool: ImagePool, index: torch.Tensor, boxes: torch.Tensor, size: int
) -> torch.Tensor:
    """Crop each box from its image and resize it to ``size²``; 0..1 floats.

    Bilinear samples at pixel centres, as many per output pixel as the box is larger than the
    output (adaptive ``roi_align``), so downscaling averages instead of aliasing.
    """
    source = pool.data[index].float().div_(255.0)
    rois = torch.cat(
        [torch.arange(len(index), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1
    )
    return roi_align(
        source, rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True
    )


def flip_rotate(
    x: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor, rot90: torch.Tensor
) -> torch.Tensor:
    """Per-sample flips then rotation by ``rot90[i]`` quarter turns (square images)."""
    x = torch.where(hflip.view(-1, 1, 1, 1), x.flip(-1), x)
    x = torch.where(vflip.view(-1, 1, 1, 1), x.flip(-2), x)
    out = x.clone()
    for k in (1, 2, 3):
        sel = rot90 == k
        if bool(sel.any()):
            out[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
    return out


def jitter(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness and contrast factors ~ U(1±strength) per sample, with probability ``jitter``."""
    n = x.shape[0]
    apply = _bernoulli(n, cfg.jitter, generator, x.device).view(-1, 1, 1, 1)
    b = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, generator, x.device).view(-1, 1, 1, 1)
    c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator, x.device).view(-1, 1, 1, 1)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    jittered = ((x * b - mean * b) * c + mean * b).clamp(0.0, 1.0)
    return torch.where(apply, jittered, x)


def gaussian_blur(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator) -> torch.Tensor:
    """Blur with probability ``blur``; sigma ~ U(blur_sigma) per sample; kernel ≈ 10% of size."""
    n, _, size, _ = x.shape
    apply = _bernoulli(n, cfg.blur, generator, x.device)
    if not bool(apply.any()):
        return x
    k = max(3, int(0.1 * size) // 2 * 2 + 1)
    sigma = _uniform(n, *cfg.blur_sigma, generator, x.device)
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    padded = F.pad(x.transpose(0, 1), (k // 2, k // 2, 0, 0), mode="reflect")
    rows = F.conv2d(padded, kernel.view(n, 1, 1, k), groups=n)
    padded = F.pad(rows, (0, 0, k // 2, k // 2), mode="reflect")
    blurred = F.conv2d(padded, kernel.view(n, 1, k, 1), groups=n).transpose(0, 1)
    return torch.where(apply.view(-1, 1, 1, 1), blurred, x)


def _bernoulli(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device) < p


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """``B×1×H×W`` in 0..1 → ``B×3×H×W`` normalised with ImageNet statistics."""
    return normalize_unit(x)


def make_views(
    pool: ImagePool, index: torch.Tensor, cfg: ViewConfig, generator: torch.Generator
) -> ViewBatch:
    """One augmented view of each indexed image."""
    n = len(index)
    boxes = sample_boxes(pool.sizes[index], cfg, generator)
    x = crop_resize(pool, index, boxes, cfg.size)
    hflip = _bernoulli(n, cfg.hflip, generator, x.device)
    vflip = _bernoulli(n, cfg.vflip, generator, x.device)
    turn = _bernoulli(n, cfg.rot90, generator, x.device)
    k = torch.randint(1, 4, (n,), generator=generator, device=generator.device).to(x.device)
    rot = torch.where(turn, k, torch.zeros_like(k))
    x = flip_rotate(x, hflip, vflip, rot)
    x = gaussian_blur(jitter(x, cfg, generator), cfg, generator)
    return ViewBatch(to_model_input(x), boxes, hflip, vflip, rot)
