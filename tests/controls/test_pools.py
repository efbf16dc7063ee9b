"""The controls' images: disjoint from evaluation, noise without structure, aligned crops."""

from __future__ import annotations

import numpy as np
import torch

from bench.controls.experiment import shot_draws
from bench.controls.pools import evaluation_card, noise_pool, part, structured_pool
from bench.controls.pretrain import epoch_order, random_crops


def test_pretraining_pool_shares_no_image_with_evaluation() -> None:
    card = evaluation_card(32, 4, 2, 2)
    evaluation = [x.image for p in ("train", "val", "test") for x in part(card, p)]
    pool = structured_pool(8, 32)
    assert len(pool) == 8 and pool[0].image.shape == (32, 32)
    assert not any(np.array_equal(a.image, b) for a in pool for b in evaluation)


def test_noise_matches_grey_levels_and_has_no_spatial_structure() -> None:
    pool = structured_pool(4, 64)
    noise = noise_pool(pool)
    pixels = np.stack([x.image for x in pool]).astype(float)
    fake = np.stack([x.image for x in noise]).astype(float)
    assert abs(fake.mean() - pixels.mean()) < 1.0 and abs(fake.std() - pixels.std()) < 1.0
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(pool, noise, strict=True))

    def neighbour_correlation(x: np.ndarray) -> float:
        return float(np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1])

    assert neighbour_correlation(pixels) > 0.5 and abs(neighbour_correlation(fake)) < 0.05


def test_draws_are_distinct_and_repeatable() -> None:
    pool = part(evaluation_card(16, 5, 1, 1), "train")
    draws = shot_draws(pool, 2, 10)
    sets = {tuple(x.stem for x in d) for d in draws}
    assert len(sets) == 10  # all C(5, 2) pairs, each once
    assert [[x.stem for x in d] for d in shot_draws(pool, 2, 10)] == [
        [x.stem for x in d] for d in draws
    ]


def test_crops_keep_image_and_mask_aligned() -> None:
    images = torch.arange(2 * 8 * 8, dtype=torch.uint8).reshape(2, 8, 8)
    masks = images.long()
    x, y = random_crops(images, masks, np.array([0, 1] * 8), 4, np.random.default_rng(0))
    assert x.shape == (16, 4, 4) and y.shape == (16, 4, 4)
    assert torch.equal(x.long(), y)


def test_every_image_is_used_once_before_any_twice() -> None:
    order = epoch_order(5, 12, np.random.default_rng(0))
    assert len(order) == 12
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5))
    assert len(set(epoch_order(100, 100, np.random.default_rng(1)))) == 100
