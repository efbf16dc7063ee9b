"""Procedural micrograph-like images for tests and offline demos (numpy + scipy.ndimage only).

Each image is drawn like an etched metallographic section at a fixed magnification (feature
sizes are in pixels, so any image size works):

- class 0, grains: a warped Voronoi tessellation, each grain with its own grey level, separated
  by thin dark grain boundaries;
- class 1, second phase: bright blobs (a thresholded smooth random field) filled with lamellae
  whose orientation follows the grain underneath, like pearlite colonies;
- class 2, precipitates: few small dark round particles (about 1% of the pixels);

then blur, a gentle illumination gradient and signal-dependent (Poisson-like) plus read noise.
Intensity alone does not separate the classes (dark boundaries look like precipitates, dark
lamellae like grains): local shape and texture are needed.

Image ``i`` of a seed is drawn from its own random stream ``(seed, kind, i)``: the same seed gives
the same arrays, and image ``i`` does not depend on ``count``. Labeled and unlabeled images come
from different streams.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

GRAIN_AREA = 400.0  # mean grain area, px
GRAIN_WARP = 3.0  # displacement of the Voronoi cells, px
GRAIN_LEVEL, GRAIN_SPREAD = 105.0, 10.0  # grey level of the grains and its grain-to-grain spread
BOUNDARY_DEPTH = 40.0  # how much darker grain boundaries are
PHASE_BLOB_SIGMA = 6.0  # smoothing of the random field that shapes second-phase blobs, px
PHASE_FRACTION = (0.15, 0.35)  # area fraction of the second phase
PHASE_LEVEL, LAMELLA_AMPLITUDE = 158.0, 32.0
LAMELLA_PERIOD = (4.0, 6.5)  # px
PRECIPITATE_AREA = 1200.0  # image area per precipitate, px
PRECIPITATE_RADIUS = (1.2, 2.6)  # px
PRECIPITATE_LEVEL = 40.0
BLUR_SIGMA = 0.8  # px
ILLUMINATION = (0.08, 0.2)  # relative brightness change across the image
SHOT_NOISE, READ_NOISE = 1.1, 4.0  # noise variance = SHOT_NOISE² · signal + READ_NOISE²

LABELED, UNLABELED = 0, 1
Shape = tuple[int, int]


def generate_labeled(
    count: int, size: int | Shape, seed: int, num_classes: int = 3
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (image, mask) pairs: uint8 H×W grey image, uint8 H×W mask of class ids.

    Mask ids run 0..num_classes-1; ``num_classes`` is 3 (grains, second phase, precipitates)
    or 2 (no precipitates).
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes}")
    shape = _shape(size)
    return [_render(_rng(seed, LABELED, i), shape, num_classes) for i in range(count)]


def generate_unlabeled(count: int, size: int | Shape, seed: int) -> list[np.ndarray]:
    """``count`` uint8 H×W grey images from the same generator (all three classes drawn)."""
    shape = _shape(size)
    return [_render(_rng(seed, UNLABELED, i), shape, 3)[0] for i in range(count)]


def _shape(size: int | Shape) -> Shape:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return int(h), int(w)


def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, index])


def _render(
    rng: np.random.Generator, shape: Shape, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    grains, boundary = _grains(rng, shape)
    phase = _second_phase(rng, shape)
    clean = _grain_levels(rng, grains)
    clean[boundary & ~phase] -= BOUNDARY_DEPTH
    clean[phase] = _lamellae(rng, grains)[phase]
    mask = phase.astype(np.uint8)
    if num_classes == 3:
        precipitates = _precipitates(rng, shape)
        clean[precipitates] = PRECIPITATE_LEVEL
        mask[precipitates] = 2
    return _acquire(rng, clean), mask


def _smooth_field(rng: np.random.Generator, shape: Shape, sigma: float) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field with correlation length ``sigma``."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-12)


def _grains(rng: np.random.Generator, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Grain id per pixel (warped Voronoi cells) and the grain-boundary pixels."""
    h, w = shape
    n = max(2, round(h * w / GRAIN_AREA))
    seeds = (rng.integers(0, h, n), rng.integers(0, w, n))
    free = np.ones(shape, dtype=bool)
    free[seeds] = False
    owner = np.zeros(shape, dtype=np.int64)
    owner[seeds] = np.arange(n)
    _, (iy, ix) = ndimage.distance_transform_edt(free, return_indices=True)
    nearest = owner[iy, ix]
    yy, xx = np.indices(shape)
    wy = np.clip(yy + GRAIN_WARP * _smooth_field(rng, shape, 8.0), 0, h - 1).astype(np.int64)
    wx = np.clip(xx + GRAIN_WARP * _smooth_field(rng, shape, 8.0), 0, w - 1).astype(np.int64)
    grains = nearest[wy, wx]
    boundary = np.zeros(shape, dtype=bool)
    boundary[:-1] |= grains[:-1] != grains[1:]
    boundary[:, :-1] |= grains[:, :-1] != grains[:, 1:]
    return grains, boundary


def _grain_levels(rng: np.random.Generator, grains: np.ndarray) -> np.ndarray:
    levels = GRAIN_LEVEL + GRAIN_SPREAD * rng.standard_normal(grains.max() + 1)
    return levels[grains]


def _second_phase(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    field = _smooth_field(rng, shape, PHASE_BLOB_SIGMA)
    fraction = rng.uniform(*PHASE_FRACTION)
    return field > np.quantile(field, 1.0 - fraction)


def _lamellae(rng: np.random.Generator, grains: np.ndarray) -> np.ndarray:
    """Striped intensity; the stripe orientation is set per grain."""
    angle = rng.uniform(0.0, np.pi, grains.max() + 1)[grains]
    period = rng.uniform(*LAMELLA_PERIOD)
    yy, xx = np.indices(grains.shape)
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    return PHASE_LEVEL + LAMELLA_AMPLITUDE * stripes


def _precipitates(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Small discs: each pixel belongs to its nearest centre if within that centre's radius."""
    h, w = shape
    n = max(1, rng.poisson(h * w / PRECIPITATE_AREA))
    centres = (rng.integers(0, h, n), rng.integers(0, w, n))
    free = np.ones(shape, dtype=bool)
    free[centres] = False
    radius = np.zeros(shape)
    radius[centres] = rng.uniform(*PRECIPITATE_RADIUS, n)
    dist, (iy, ix) = ndimage.distance_transform_edt(free, return_indices=True)
    return dist <= radius[iy, ix]


def _acquire(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    """Blur, illumination gradient and noise of the microscope; uint8 result."""
    h, w = clean.shape
    image = ndimage.gaussian_filter(clean, BLUR_SIGMA)
    angle = rng.uniform(0.0, 2 * np.pi)
    yy, xx = np.indices(clean.shape)
    ramp = (xx / max(w - 1, 1) - 0.5) * np.cos(angle) + (yy / max(h - 1, 1) - 0.5) * np.sin(angle)
    image *= 1.0 + rng.uniform(*ILLUMINATION) * ramp
    std = np.sqrt(SHOT_NOISE**2 * np.clip(image, 0, None) + READ_NOISE**2)
    image += std * rng.standard_normal(clean.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
