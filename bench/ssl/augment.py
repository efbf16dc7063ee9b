"""Batched view augmentation on the training device (GPU when present).

The unlabeled pool lives on the device as one padded uint8 tensor at the working scale; a batch of
views is cut out with one ``roi_align`` call (random resized crops, each sample its own box; on a
CPU from windows around the boxes, ``crop_resize``), then
flips, 90° rotations, brightness/contrast jitter, Gaussian blur and solarisation are applied per
sample on the whole batch. No PIL, no worker processes. ``ViewBatch`` keeps each sample's crop box,
flips and rotation so dense methods can map feature cells between views.

Crop boxes are drawn as torchvision's ``RandomResizedCrop.get_params`` draws them: up to 10
attempts of (area ~ U(scale) · reference area, log aspect ~ U(log ratio)), rounded to whole
pixels, the first that fits the image is taken, at a uniform integer offset; if none fits, the
central crop of the whole image clamped to the ratio range. The reference area is the image's
(``area_of = "image"``, torchvision's meaning) or the view's ``size²`` in working pixels
(``area_of = "view"``: the area range is a zoom² range, a view pixel ≈ a working pixel).

Colour jitter on these grayscale images is torchvision's ``ColorJitter`` restricted to brightness
and contrast (saturation, hue and grayscale conversion are identities when R = G = B), in a random
order per sample as torchvision's; each factor ~ U(max(0, 1 − s), 1 + s), results clamped to 0..1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from bench.core.errors import BenchError
from bench.models.inputs import normalize_unit
from bench.ssl.config import PretrainConfig

CROP_ATTEMPTS = 10
"""Rejection-sampling attempts per box before the fallback, as torchvision."""


@dataclass(frozen=True)
class ViewConfig:
    """One view's augmentation distribution. A method's recipe is a ``ViewConfig``; ``sized``
    gives it the run's view size and crop rule."""

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    """Random-resized-crop area range, as a fraction of the reference area (``area_of``)."""
    area_of: str = "image"
    """``image``: the source image's area (torchvision); ``view``: ``size²`` working pixels."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0
    rot90: float = 0.0
    jitter: float = 0.8
    """Probability of colour jitter."""
    brightness: float = 0.4
    contrast: float = 0.4
    blur: float = 0.5
    """Probability of Gaussian blur (kernel ≈ 10 % of the view side, odd)."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize: float = 0.0
    """Probability of solarisation (values ≥ 0.5 inverted)."""


def sized(recipe: ViewConfig, cfg: PretrainConfig) -> ViewConfig:
    """``recipe`` at the run's view size, cropped by the run's rule (``PretrainConfig.crop``):
    ``working`` replaces the recipe's area range by the zoom range in working pixels, ``image``
    keeps the recipe's own range as a fraction of the whole image."""
    if cfg.crop == "image":
        return dataclasses.replace(recipe, size=cfg.view_size, area_of="image")
    if cfg.crop == "working":
        if not 0 < cfg.zoom_min <= cfg.zoom_max:
            raise BenchError(f"need 0 < zoom_min ≤ zoom_max, got {cfg.zoom_min}, {cfg.zoom_max}")
        return dataclasses.replace(
            recipe,
            size=cfg.view_size,
            area_of="view",
            scale=(cfg.zoom_min**2, cfg.zoom_max**2),
        )
    raise BenchError(f"crop must be 'working' or 'image', got '{cfg.crop}'")


class ImagePool:
    """Grayscale images of different sizes, padded into one ``N×1×H×W`` uint8 tensor on ``device``.

    Padding repeats the edge pixels, so interpolation at a crop's border never mixes in zeros.
    ``ids`` names each image (default ``0..N−1``; the pool's ids are never negative): two entries
    with one id are the same image, so a contrastive loss never uses one as the other's negative.
    """

    def __init__(
        self, images: list[np.ndarray], device: torch.device, ids: list[int] | None = None
    ) -> None:
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
        self.ids = torch.tensor(
            list(range(len(images))) if ids is None else ids, dtype=torch.long, device=device
        )
        self.device = device

    def __len__(self) -> int:
        return self.data.shape[0]

    def to(self, device: torch.device) -> ImagePool:
        """This pool on ``device`` (in place)."""
        self.data, self.sizes, self.ids = (t.to(device) for t in (self.data, self.sizes, self.ids))
        self.device = device
        return self


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
    """Random-resized-crop boxes ``B×4`` (x1, y1, x2, y2) in whole pixels for images of ``sizes``
    (``B×2``: height, width), drawn as torchvision draws them (module docstring)."""
    n, device = sizes.shape[0], sizes.device
    h, w = sizes[:, 0:1], sizes[:, 1:2]
    reference = h * w if cfg.area_of == "image" else torch.full_like(h, float(cfg.size**2))
    area = reference * _uniform((n, CROP_ATTEMPTS), *cfg.scale, generator, device)
    log_low, log_high = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    aspect = torch.exp(_uniform((n, CROP_ATTEMPTS), log_low, log_high, generator, device))
    cw = torch.round(torch.sqrt(area * aspect))
    ch = torch.round(torch.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.int().argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    cw, ch = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0]
    h, w = h[:, 0], w[:, 0]
    # fallback: the whole image, clamped to the ratio range, centred
    in_ratio = w / h
    low, high = min(cfg.ratio), max(cfg.ratio)
    fw = torch.where(in_ratio > high, torch.round(h * high), w)
    fh = torch.where(in_ratio < low, torch.round(w / low), h)
    cw, ch = torch.where(found, cw, fw), torch.where(found, ch, fh)
    y1 = torch.floor(_uniform((n,), 0.0, 1.0, generator, device) * (h - ch + 1))
    x1 = torch.floor(_uniform((n,), 0.0, 1.0, generator, device) * (w - cw + 1))
    y1 = torch.where(found, y1, torch.div(h - ch, 2, rounding_mode="floor"))
    x1 = torch.where(found, x1, torch.div(w - cw, 2, rounding_mode="floor"))
    return torch.stack([x1, y1, x1 + cw, y1 + ch], dim=1)


def _uniform(
    shape: tuple[int, ...],
    low: float,
    high: float,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    draw = torch.rand(shape, generator=generator, device=generator.device).to(device)
    return low + (high - low) * draw


WINDOW_MARGIN = 2
"""Pixels around each box in its window: more than bilinear sampling reads beyond a box."""


def crop_resize(
    pool: ImagePool, index: torch.Tensor, boxes: torch.Tensor, size: int
) -> torch.Tensor:
    """Crop each box from its image and resize it to ``size²``; 0..1 floats.

    Bilinear samples at pixel centres, as many per output pixel as the box is larger than the
    output (adaptive ``roi_align``), so downscaling averages instead of aliasing. On a CPU only a
    window around the boxes (``box_windows``) is converted to float, not every whole image:
    converting 16 padded MetalDAM images per batch was 1.6 of the 10 s a MatSSL quick pretraining
    takes. The windowed sampling equals the whole-image one up to float rounding of the sample
    positions. On a GPU the conversion is cheap and the shapes stay data-independent.
    """
    if pool.data.device.type == "cpu":
        windows, boxes = box_windows(pool.data, index, boxes)
    else:
        windows = pool.data[index]
    source = windows.float().div_(255.0)
    rois = torch.cat(
        [torch.arange(len(index), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1
    )
    return roi_align(
        source, rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True
    )


def box_windows(
    data: torch.Tensor, index: torch.Tensor, boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same-sized ``B×1×h×w`` windows of ``data[index]`` that hold each whole-pixel box with
    ``WINDOW_MARGIN`` pixels around it (fewer at an image's edge, where the window ends with
    the image), and the boxes in window coordinates."""
    height, width = data.shape[-2:]
    low = (boxes[:, :2] - WINDOW_MARGIN).clamp(min=0).floor()  # x, y
    span = ((boxes[:, 2:] + WINDOW_MARGIN).ceil() - low).amax(dim=0)
    w, h = min(int(span[0]), width), min(int(span[1]), height)
    left = low[:, 0].clamp(max=width - w).long()
    top = low[:, 1].clamp(max=height - h).long()
    rows = top[:, None] + torch.arange(h, device=data.device)
    cols = left[:, None] + torch.arange(w, device=data.device)
    windows = data[index[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None]
    shift = torch.stack([left, top, left, top], dim=1).to(boxes.dtype)
    return windows, boxes - shift


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
    """torchvision's brightness and contrast jitter per sample, with probability ``jitter``."""
    n, device = x.shape[0], x.device
    apply = _bernoulli(n, cfg.jitter, generator, device).view(-1, 1, 1, 1)
    b = _factor(n, cfg.brightness, generator, device)
    c = _factor(n, cfg.contrast, generator, device)
    brightness_first = _bernoulli(n, 0.5, generator, device).view(-1, 1, 1, 1)
    bc = _contrast(_brightness(x, b), c)
    cb = _brightness(_contrast(x, c), b)
    return torch.where(apply, torch.where(brightness_first, bc, cb), x)


def _factor(
    n: int, strength: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    return _uniform((n,), max(0.0, 1 - strength), 1 + strength, generator, device).view(-1, 1, 1, 1)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor).clamp(0.0, 1.0)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(-3, -2, -1), keepdim=True)
    return (factor * x + (1 - factor) * mean).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator) -> torch.Tensor:
    """Blur with probability ``blur``; sigma ~ U(blur_sigma) per sample; kernel ≈ 10% of size."""
    n, _, size, _ = x.shape
    apply = _bernoulli(n, cfg.blur, generator, x.device)
    if not bool(apply.any()):
        return x
    k = max(3, int(0.1 * size) // 2 * 2 + 1)
    sigma = _uniform((n,), *cfg.blur_sigma, generator, x.device)
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    padded = F.pad(x.transpose(0, 1), (k // 2, k // 2, 0, 0), mode="reflect")
    rows = F.conv2d(padded, kernel.view(n, 1, 1, k), groups=n)
    padded = F.pad(rows, (0, 0, k // 2, k // 2), mode="reflect")
    blurred = F.conv2d(padded, kernel.view(n, 1, k, 1), groups=n).transpose(0, 1)
    return torch.where(apply.view(-1, 1, 1, 1), blurred, x)


def solarize(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator) -> torch.Tensor:
    """With probability ``solarize``, invert the values ≥ 0.5 (torchvision ``RandomSolarize``)."""
    apply = _bernoulli(x.shape[0], cfg.solarize, generator, x.device).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= 0.5), 1.0 - x, x)


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
    x = solarize(gaussian_blur(jitter(x, cfg, generator), cfg, generator), cfg, generator)
    return ViewBatch(to_model_input(x), boxes, hflip, vflip, rot)
