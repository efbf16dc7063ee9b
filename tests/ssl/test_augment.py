"""Batched view augmentation: per-sample parameters, value range, and its distributions (crop
boxes against torchvision's own ``RandomResizedCrop``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.ops import roi_align
from torchvision.transforms import ColorJitter, RandomResizedCrop

from bench.ssl.augment import (
    ImagePool,
    ViewConfig,
    crop_resize,
    jitter,
    make_views,
    sample_boxes,
    sized,
    solarize,
)
from bench.ssl.config import PretrainConfig


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


def test_crops_from_windows_equal_crops_from_whole_images():
    """The CPU path converts only windows around the boxes; its views equal roi_align on the
    whole float images up to rounding, boxes at the images' edges and corners included."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((90, 130), (120, 160))]
    pool = ImagePool(images, torch.device("cpu"))
    boxes = torch.tensor(
        [[0, 0, 37, 41], [93, 79, 130, 90], [3, 5, 160, 120], [61, 0, 99, 57], [0, 70, 45, 120]],
        dtype=torch.float32,
    )
    index = torch.tensor([0, 0, 1, 1, 1])
    whole = pool.data[index].float() / 255
    rois = torch.cat([torch.arange(5, dtype=torch.float32)[:, None], boxes], dim=1)
    expected = roi_align(
        whole, rois, output_size=24, spatial_scale=1.0, sampling_ratio=0, aligned=True
    )
    got = crop_resize(pool, index, boxes, 24)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.equal(got[0], got[1])


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0), (0.5, 1.0)])
def test_crop_boxes_follow_torchvision_on_a_1024x702_frame(scale):
    """Area fraction, aspect ratio, offsets and the fallback rate against torchvision's own
    ``RandomResizedCrop.get_params`` (10 rejection attempts, then the central crop)."""
    height, width, n = 702, 1024, 6000
    torch.manual_seed(0)
    frame = torch.zeros(1, height, width)
    ref = np.array(
        [RandomResizedCrop.get_params(frame, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
    )  # rows: top, left, h, w
    sizes = torch.tensor([[height, width]], dtype=torch.float32).repeat(n, 1)
    ours = sample_boxes(sizes, ViewConfig(scale=scale), torch.Generator().manual_seed(1)).numpy()
    ow, oh = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    assert (ow == np.round(ow)).all() and (ours[:, :2] >= 0).all()
    assert (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all()
    pairs = {
        "area": (ref[:, 2] * ref[:, 3], ow * oh),
        "aspect": (ref[:, 3] / ref[:, 2], ow / oh),
        "top": (ref[:, 0], ours[:, 1]),
        "left": (ref[:, 1], ours[:, 0]),
    }
    for name, (theirs, mine) in pairs.items():
        assert ks_2samp(theirs, mine).pvalue > 1e-3, name
    area = ow * oh / (height * width)
    assert abs(area.mean() - (ref[:, 2] * ref[:, 3]).mean() / (height * width)) < 0.01
    fallback_theirs, fallback_ours = (ref[:, 2] == height).mean(), (oh == height).mean()
    assert abs(fallback_theirs - fallback_ours) < 0.01 + 0.5 * fallback_theirs


def test_fallback_is_torchvisions_central_crop():
    """No attempt can fit (area ≥ 2× the image): the whole image clamped to the ratio, centred."""
    cfg = ViewConfig(scale=(2.0, 3.0), ratio=(3 / 4, 4 / 3))
    sizes = torch.tensor([[100.0, 400.0], [300.0, 200.0], [100.0, 120.0]])
    boxes = sample_boxes(sizes, cfg, torch.Generator().manual_seed(0))
    # 400 wide × 100 high is wider than 4/3: height 100, width round(133.3) = 133, centred
    assert boxes[0].tolist() == [133.0, 0.0, 266.0, 100.0]
    # 200 × 300 is taller than 3/4: width 200, height round(266.7) = 267, centred
    assert boxes[1].tolist() == [0.0, 16.0, 200.0, 283.0]
    assert boxes[2].tolist() == [0.0, 0.0, 120.0, 100.0]  # within the ratio range: whole image


def test_working_pixel_crops_cover_the_view_size_times_the_zoom():
    run = PretrainConfig(view_size=96, zoom_min=0.8, zoom_max=1.25)
    cfg = sized(ViewConfig(scale=(0.08, 1.0)), run)
    assert cfg.area_of == "view" and cfg.scale == pytest.approx((0.64, 1.5625)) and cfg.size == 96
    n = 4000
    sizes = torch.tensor([[702.0, 1024.0]]).repeat(n, 1)
    boxes = sample_boxes(sizes, cfg, torch.Generator().manual_seed(0))
    side = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / 96
    assert side.min() >= 0.79 and side.max() <= 1.26  # zoom within 0.8–1.25 (whole pixels)
    # area uniform in 0.64..1.5625 view areas: mean zoom² ≈ 1.10
    assert abs((side**2).mean().item() - (0.64 + 1.5625) / 2) < 0.02
    image = sized(ViewConfig(scale=(0.08, 1.0)), PretrainConfig(crop="image", view_size=96))
    assert image.area_of == "image" and image.scale == (0.08, 1.0)


def test_jitter_matches_torchvision_colorjitter_on_gray_images():
    """Per-sample brightness/contrast jitter: the distributions of the output's mean and spread
    match torchvision's ``ColorJitter`` (random order, clamping) on the same gray image."""
    n = 3000
    image = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    cfg = ViewConfig(jitter=1.0, brightness=0.8, contrast=0.8)
    ours = jitter(image.repeat(n, 1, 1, 1), cfg, torch.Generator().manual_seed(1))[:, 0]
    torch.manual_seed(2)
    reference = ColorJitter(brightness=0.8, contrast=0.8)
    theirs = torch.stack([reference(image[0].expand(3, -1, -1))[0] for _ in range(n)])
    for stat in (lambda t: t.mean(dim=(1, 2)), lambda t: t.std(dim=(1, 2))):
        assert ks_2samp(stat(theirs).numpy(), stat(ours).numpy()).pvalue > 1e-3
    applied = jitter(image.repeat(n, 1, 1, 1), ViewConfig(jitter=0.8), torch.Generator())
    rate = (applied != image).any(dim=(1, 2, 3)).float().mean().item()
    assert abs(rate - 0.8) < 0.03


def test_solarize_inverts_bright_values_with_its_probability():
    x = torch.linspace(0, 1, 11).view(1, 1, 1, 11).repeat(2000, 1, 1, 1)
    out = solarize(x, ViewConfig(solarize=0.2), torch.Generator().manual_seed(0))
    changed = (out != x).any(dim=(1, 2, 3)).float().mean().item()
    assert abs(changed - 0.2) < 0.03
    row = out[(out != x).any(dim=(1, 2, 3))][0, 0, 0]
    expected = torch.where(x[0, 0, 0] >= 0.5, 1 - x[0, 0, 0], x[0, 0, 0])
    torch.testing.assert_close(row, expected)
