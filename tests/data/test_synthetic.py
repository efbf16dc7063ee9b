"""The procedural dataset: deterministic, well-formed, and a real (not intensity-trivial) task."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench.data.synthetic import generate_labeled, generate_unlabeled


def _pixels(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    image = np.concatenate([im.ravel() for im, _ in pairs]).astype(np.int64)
    mask = np.concatenate([m.ravel() for _, m in pairs])
    return image, mask


def _best_threshold_balanced_error(a: np.ndarray, b: np.ndarray) -> float:
    """Lowest balanced error of any single grey-level threshold separating samples a from b."""
    t = np.arange(257)
    below_a = np.searchsorted(np.sort(a), t) / a.size
    below_b = np.searchsorted(np.sort(b), t) / b.size
    a_low = (below_b + 1 - below_a) / 2  # class a predicted below t
    a_high = (below_a + 1 - below_b) / 2
    return float(np.minimum(a_low, a_high).min())


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    return generate_labeled(6, 64, seed=3)


def test_same_seed_same_arrays_other_seed_other_arrays():
    a, b, c = (generate_labeled(3, 48, s) for s in (7, 7, 8))
    for (ia, ma), (ib, mb) in zip(a, b, strict=True):
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    assert not np.array_equal(a[0][0], c[0][0])
    for x, y in zip(generate_unlabeled(2, 48, 7), generate_unlabeled(2, 48, 7), strict=True):
        assert np.array_equal(x, y)


def test_image_i_does_not_depend_on_count():
    few, many = generate_labeled(3, 40, 5), generate_labeled(6, 40, 5)
    for (ia, ma), (ib, mb) in zip(few, many[: len(few)], strict=True):
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    assert np.array_equal(generate_unlabeled(2, 40, 5)[1], generate_unlabeled(5, 40, 5)[1])


def test_unlabeled_images_are_not_the_labeled_ones():
    assert not np.array_equal(generate_unlabeled(1, 48, 0)[0], generate_labeled(1, 48, 0)[0][0])


def test_dtype_shape_and_range(pairs):
    for image, mask in pairs:
        assert image.dtype == mask.dtype == np.uint8
        assert image.shape == mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 1, 2}
        assert image.std() > 15  # real contrast ...
        assert (image == 0).mean() < 0.01 and (image == 255).mean() < 0.01  # ... not clipped
    for image in generate_unlabeled(3, 64, 3):
        assert image.dtype == np.uint8 and image.shape == (64, 64)


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (7, 5), 1])
def test_any_size_works(size):
    ((image, mask),) = generate_labeled(1, size, 0)
    expected = (size, size) if isinstance(size, int) else size
    assert image.shape == mask.shape == expected
    assert generate_unlabeled(1, size, 0)[0].shape == expected


def test_every_class_present_and_precipitates_rare(pairs):
    _, mask = _pixels(pairs)
    fractions = np.bincount(mask, minlength=3) / mask.size
    assert all(fractions > 0)
    assert fractions[2] < 0.03  # precipitates: few pixels
    assert 0.1 < fractions[1] < 0.4  # second phase: a real minority
    assert all((m == c).any() for _, m in pairs for c in (1, 2))


def test_two_class_variant_and_bad_num_classes():
    _, mask = _pixels(generate_labeled(4, 64, 0, num_classes=2))
    assert set(np.unique(mask)) == {0, 1}
    with pytest.raises(ValueError, match="num_classes"):
        generate_labeled(1, 32, 0, num_classes=5)


def test_class_means_differ_but_intensity_alone_does_not_separate(pairs):
    image, mask = _pixels(pairs)
    grain, phase, precipitate = (image[mask == c] for c in range(3))
    assert phase.mean() > grain.mean() + 25  # brighter second phase
    assert precipitate.mean() < grain.mean() - 25  # dark precipitates
    # no single threshold separates grains from either other class
    assert _best_threshold_balanced_error(grain, phase) > 0.03
    assert _best_threshold_balanced_error(grain, precipitate) > 0.03
    # even the best grey-level -> class lookup table, fitted on these very pixels, errs
    counts = np.stack([np.bincount(image[mask == c], minlength=256) for c in range(3)])
    assert counts.max(axis=0).sum() / mask.size < 0.95


def test_fast_enough():
    start = time.perf_counter()
    generate_labeled(16, 128, 0)
    assert time.perf_counter() - start < 2.0  # typically ~0.1 s; generous for shared CPUs
