"""Batched view augmentation: per-sample parameters, value range, and its distributions."""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.ssl.augment import ImagePool, ViewConfig, make_views, sample_boxes


def _pool(n=4, h=120, w=160):
    rng = np.random.default_rng(0)
    return ImagePool(
        [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(n)], torch.device("cpu")
    )


def test_each_sample_gets_its_own_parameters():
    pool = _pool()
    index = torch.zeros(16, dtype=torch.long)  # the same image sixteen times
    views = make_views(
        pool, index, ViewConfig(size=32, rot90=0.5, vflip=0.5), torch.Generator().manual_seed(0)
    )
    assert len({tuple(b.tolist()) for b in views.boxes}) == 16
    assert 0 < int(views.hflip.sum()) < 16
    assert len({tuple(v.flatten()[:50].tolist()) for v in views.images}) == 16


def test_values_stay_in_range_and_geometry_inside_the_image():
    pool = _pool(n=3, h=90, w=200)
    views = make_views(
        pool, torch.arange(3).repeat(20), ViewConfig(size=48), torch.Generator().manual_seed(1)
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = views.images * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    b = views.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= 200 + 1e-3).all() and (b[:, 3] <= 90 + 1e-3).all()


def test_crop_area_and_flip_frequencies_match_the_configuration():
    cfg = ViewConfig(size=16, scale=(0.2, 1.0), ratio=(1.0, 1.0), hflip=0.3, vflip=0.0)
    n = 4000
    sizes = torch.tensor([[1000.0, 1000.0]]).repeat(n, 1)
    boxes = sample_boxes(sizes, cfg, torch.Generator().manual_seed(2))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 1e6
    # Area fraction ~ U(0.2, 1): mean 0.6, sd 0.8/sqrt(12); quartiles at 0.4 and 0.8.
    assert abs(area.mean().item() - 0.6) < 0.02
    assert abs(area.std().item() - 0.8 / math.sqrt(12)) < 0.02
    assert (
        abs(area.quantile(0.25).item() - 0.4) < 0.03
        and abs(area.quantile(0.75).item() - 0.8) < 0.03
    )

    pool = _pool(n=1, h=64, w=64)
    views = make_views(
        pool, torch.zeros(n, dtype=torch.long), cfg, torch.Generator().manual_seed(3)
    )
    assert abs(views.hflip.float().mean().item() - 0.3) < 0.03
    assert views.vflip.sum() == 0 and (views.rot90 == 0).all()


def test_crop_and_flip_reproduce_the_source_pixels():
    image = np.arange(64 * 64, dtype=np.int64).reshape(64, 64) % 251
    pool = ImagePool([image.astype(np.uint8)], torch.device("cpu"))
    cfg = ViewConfig(size=64, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, jitter=0.0, blur=0.0)
    views = make_views(
        pool, torch.zeros(1, dtype=torch.long), cfg, torch.Generator().manual_seed(0)
    )
    gray = views.images[0, 0] * 0.229 + 0.485
    expected = torch.from_numpy(image[:, ::-1].copy()).float() / 255
    torch.testing.assert_close(gray, expected, atol=2e-3, rtol=0)
