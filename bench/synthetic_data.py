"""The ``synthetic`` card's images: procedural micrographs generated in memory, no files.

Stems are ``train_000``, ``val_000``, ``test_000``...; the card's ``generator`` table sets how many
of each, their size and the seed. Each part uses its own seed so parts never share images.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from bench.cards import DatasetCard
from bench.errors import BenchError
from bench.synthetic import generate_labeled, generate_unlabeled

PARTS = ("train", "val", "test")


def synthetic_stems(card: DatasetCard, part: str) -> list[str]:
    return [f"{part}_{i:03d}" for i in range(int(card.generator[part]))]


@lru_cache(maxsize=8)
def _labeled_part(part: str, count: int, size: int, seed: int, classes: int):
    offset = PARTS.index(part) + 1
    return generate_labeled(count, size, seed * 10 + offset, num_classes=classes)


def synthetic_labeled(card: DatasetCard, stems: list[str]):
    from bench.data import LabeledImage

    gen = card.generator
    out = []
    for stem in stems:
        part, _, index = stem.partition("_")
        if part not in PARTS or not index.isdigit() or int(index) >= int(gen[part]):
            raise BenchError(f"{card.path}: no synthetic image '{stem}'")
        pairs = _labeled_part(part, int(gen[part]), int(gen["size"]), int(gen["seed"]), card.num_classes)
        image, mask = pairs[int(index)]
        out.append(LabeledImage(stem, image, mask))
    return out


def synthetic_unlabeled(card: DatasetCard, limit: int | None = None) -> list[np.ndarray]:
    gen = card.generator
    count = int(gen["unlabeled"]) if limit is None else min(limit, int(gen["unlabeled"]))
    return generate_unlabeled(count, int(gen["size"]), int(gen["seed"]) * 10)
