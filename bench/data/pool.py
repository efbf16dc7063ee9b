"""The SSL pool: the unlabeled images a method pretrains on, and what identifies them.

A card's ``[unlabeled]`` table names either a separate set of files (``images = "<glob>"``, the
instrument band cut with ``crop_bottom``) or ``from_split = "train"``: the shot pool of the run's
split (its training images minus validation), without their masks.

The pool has two modes. ``honest`` (the default) is per split: it leaves out every image that is a
near-duplicate (``bench.data.neardup``, followed through chains of pairs) of the split's validation
or test images, and the card's ``[unlabeled] exclude`` list. ``transductive`` keeps every file, as
the seeds' papers did; it is an explicit opt-in, recorded with the run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError
from bench.data.cards import DatasetCard
from bench.data.filecache import files_digest
from bench.data.neardup import scan_card, unlabeled_name
from bench.data.protocol import partition
from bench.data.sources import FileSource, GeneratedSource, source_for

POOL_MODES = ("honest", "transductive")
DEFAULT_POOL = "honest"


def _require_pool(card: DatasetCard, mode: str) -> None:
    if mode not in POOL_MODES:
        raise BenchError(f"unknown pool mode '{mode}'; modes: {', '.join(POOL_MODES)}")
    if card.unlabeled is None and not card.generator:
        raise BenchError(
            f"{card.path}: dataset '{card.name}' has no [unlabeled] pool for "
            'pretraining; add one to the card (images = "<glob>" or '
            'from_split = "train")'
        )


def excluded(card: DatasetCard, data_root: Path, split: str | None = None) -> set[str]:
    """Names an honest pool of ``split`` leaves out: near-duplicates of its validation and test
    images (and of those, transitively), plus the card's ``exclude`` list."""
    if card.generator:
        return set()
    part = partition(card, data_root, split)
    evaluation = set(part.val) | set(part.test)
    linked = scan_card(card, data_root).closure(evaluation) - evaluation
    listed = set(card.unlabeled.exclude) if card.unlabeled else set()
    return linked | listed


def pool_members(
    card: DatasetCard, data_root: Path, split: str | None = None, mode: str = DEFAULT_POOL
) -> list[tuple[str, Path]]:
    """(name, file) of each pool image: a split's stem, or ``unlabeled/<file name>``; empty for
    a generated card."""
    _require_pool(card, mode)
    source = source_for(card, data_root)
    if not isinstance(source, FileSource):
        return []
    assert card.unlabeled is not None
    if card.unlabeled.from_split:
        members = [(s, source.image_path(s)) for s in partition(card, data_root, split).pool]
    else:
        members = [(unlabeled_name(f), f) for f in source.unlabeled_files()]
    if mode == "transductive":
        return members
    leave_out = excluded(card, data_root, split)
    return [(name, path) for name, path in members if name not in leave_out]


def pool_files(
    card: DatasetCard, data_root: Path, split: str | None = None, mode: str = DEFAULT_POOL
) -> list[Path]:
    """The files of the SSL pool (empty for a generated card)."""
    return [path for _, path in pool_members(card, data_root, split, mode)]


def load_pool(
    card: DatasetCard,
    data_root: Path,
    limit: int | None = None,
    split: str | None = None,
    mode: str = DEFAULT_POOL,
) -> list[np.ndarray]:
    """The SSL pool's images (uint8 grayscale), instrument band removed."""
    _require_pool(card, mode)
    source = source_for(card, data_root)
    if isinstance(source, GeneratedSource):
        return source.unlabeled_images(limit)
    assert card.unlabeled is not None
    members = pool_members(card, data_root, split, mode)[:limit]
    if card.unlabeled.from_split:
        return [item.image for item in source.labeled([n for n, _ in members])]  # layout rules
    assert isinstance(source, FileSource)
    return source.read_unlabeled([path for _, path in members])


def pool_fingerprint(
    card: DatasetCard, data_root: Path, split: str | None = None, mode: str = DEFAULT_POOL
) -> dict[str, object]:
    """Identifies the SSL pool: the card, the mode, a digest of its files' names and contents and
    of the excluded set (or the generator)."""
    source = source_for(card, data_root)
    if isinstance(source, GeneratedSource):
        return {"dataset": card.name, "generator": card.generator}
    members = pool_members(card, data_root, split, mode)
    left_out = sorted(excluded(card, data_root, split)) if mode == "honest" else []
    crop = card.unlabeled.crop_bottom if card.unlabeled else 0
    return {
        "dataset": card.name,
        "mode": mode,
        "files": len(members),
        "digest": files_digest(members),
        "excluded": hashlib.sha256("\n".join(left_out).encode()).hexdigest()[:16],
        "crop_bottom": crop,
    }


def labeled_fingerprint(card: DatasetCard, data_root: Path, stems: list[str]) -> str:
    """A digest of the image and mask files of ``stems`` (names and contents), so a run whose
    data changed under the same names is a new run; ``generated`` for a generated card."""
    source = source_for(card, data_root)
    if not isinstance(source, FileSource):
        return "generated"
    named = [
        (f"{kind}:{stem}", path)
        for stem in stems
        for kind, path in (("image", source.image_path(stem)), ("mask", source.mask_path(stem)))
    ]
    return files_digest(named)
