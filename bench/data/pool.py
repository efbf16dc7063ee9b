"""The SSL pool: the unlabeled images a method pretrains on, and what identifies them.

A card's ``[unlabeled]`` table names either a separate set of files (``images = "<glob>"``, the
instrument band cut with ``crop_bottom``) or ``from_split = "train"``: the shot pool of the run's
split (its training images minus validation), without their masks. Validation and test images
never enter pretraining through ``from_split``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError
from bench.data.cards import DatasetCard
from bench.data.protocol import partition
from bench.data.sources import FileSource, GeneratedSource, source_for


def _require_pool(card: DatasetCard) -> None:
    if card.unlabeled is None and not card.generator:
        raise BenchError(
            f"{card.path}: dataset '{card.name}' has no [unlabeled] pool for "
            'pretraining; add one to the card (images = "<glob>" or '
            'from_split = "train")'
        )


def pool_files(card: DatasetCard, data_root: Path, split: str | None = None) -> list[Path]:
    """The files of the SSL pool (empty for a generated card)."""
    _require_pool(card)
    source = source_for(card, data_root)
    if isinstance(source, FileSource) and card.unlabeled is not None and card.unlabeled.from_split:
        return [source.image_path(s) for s in partition(card, data_root, split).pool]
    return source.unlabeled_files()


def load_pool(
    card: DatasetCard, data_root: Path, limit: int | None = None, split: str | None = None
) -> list[np.ndarray]:
    """The SSL pool's images (uint8 grayscale), instrument band removed."""
    _require_pool(card)
    source = source_for(card, data_root)
    if card.unlabeled is not None and card.unlabeled.from_split:
        stems = partition(card, data_root, split).pool[:limit]
        return [item.image for item in source.labeled(stems)]  # layout rules apply
    return source.unlabeled_images(limit)


def pool_fingerprint(
    card: DatasetCard, data_root: Path, split: str | None = None
) -> dict[str, object]:
    """Identifies the SSL pool: the card and a digest of its file list (or generator)."""
    source = source_for(card, data_root)
    if isinstance(source, GeneratedSource):
        return {"dataset": card.name, "generator": card.generator}
    names = [f.name for f in pool_files(card, data_root, split)]
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    crop = card.unlabeled.crop_bottom if card.unlabeled else 0
    return {"dataset": card.name, "files": len(names), "digest": digest, "crop_bottom": crop}
