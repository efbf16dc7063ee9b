"""The images the controls pretrain on, composed from the synthetic card's generator.

Every set comes from ``GeneratedSource`` of a copy of the ``synthetic`` card with its own seed and
counts (``dataclasses.replace``); the generator draws image ``i`` of a seed from its own stream
``(seed, kind, i)``, so sets of different seeds share no image, and none shares one with the
evaluation card (seed ``EVAL_SEED``).

- ``evaluation_card``: the card the probe is scored on (shots, validation, test).
- ``structured_pool``: labeled micrographs of the same generator, another seed: the suitable data.
- ``noise_pool``: pure noise, i.i.d. Gaussian pixels with the structured pool's grey-level mean
  and deviation, paired with the structured pool's masks (labels that say nothing about the
  pixels): the same amount of data with no structure.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bench.data.cards import DatasetCard, load_card
from bench.data.images import LabeledImage
from bench.data.sources import GeneratedSource

CARD = "synthetic"
EVAL_SEED = 0
POOL_SEED = 1000
"""The pretraining pools' generator seed (its parts use seeds 10001..10003; evaluation 1..3)."""


def generated_card(seed: int, size: int, train: int, val: int, test: int) -> DatasetCard:
    """The synthetic card with its generator's seed and counts replaced."""
    card = load_card(CARD)
    generator = {**card.generator, "seed": seed, "size": size}
    generator.update(train=train, val=val, test=test, unlabeled=0)
    return dataclasses.replace(card, generator=generator)


def part(card: DatasetCard, name: str) -> list[LabeledImage]:
    """Every image of one generated part (``train``, ``val`` or ``test``)."""
    source = GeneratedSource(card)
    return source.labeled(source.stems(name))


def evaluation_card(size: int, train: int, val: int, test: int) -> DatasetCard:
    return generated_card(EVAL_SEED, size, train, val, test)


def structured_pool(count: int, size: int) -> list[LabeledImage]:
    """``count`` labeled micrographs of the generator, disjoint from the evaluation images."""
    return part(generated_card(POOL_SEED, size, count, 0, 0), "train")


NOISE_KINDS = ("white", "spectral")


def noise_pool(
    structured: list[LabeledImage], kind: str = "white", seed: int = POOL_SEED
) -> list[LabeledImage]:
    """Pure noise images as many and as large as ``structured``, with its masks.

    ``white``: i.i.d. Gaussian pixels with the pool's grey-level mean and deviation. ``spectral``:
    each image's Fourier amplitudes with random phases (a Gaussian random field with that image's
    power spectrum, so its grain and lamella scales), shifted and scaled to the image's mean and
    deviation: the second-order statistics of a micrograph without its shapes.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {', '.join(NOISE_KINDS)}, got '{kind}'")
    pixels = np.stack([item.image for item in structured]).astype(np.float64)
    mean, std = pixels.mean(), pixels.std()
    rng = np.random.default_rng(seed)
    out = []
    for item in structured:
        white = rng.standard_normal(item.image.shape)
        if kind == "white":
            noise = mean + std * white
        else:
            image = item.image.astype(np.float64)
            phases = np.fft.fft2(white)
            field = np.fft.ifft2(np.abs(np.fft.fft2(image)) * phases / np.abs(phases)).real
            noise = image.mean() + image.std() * (field - field.mean()) / (field.std() + 1e-12)
        noisy = np.clip(np.rint(noise), 0, 255).astype(np.uint8)
        out.append(LabeledImage(f"noise_{item.stem}", noisy, item.mask))
    return out
