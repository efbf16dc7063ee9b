"""Near-duplicate images of a card: the same field of view saved twice (e.g. a labeled JPEG and an
unlabeled PNG of one frame), found by normalized correlation of small thumbnails.

Each image becomes a ``THUMB``×``THUMB`` grayscale thumbnail: the instrument band removed first
(labeled images cropped to their mask height when the card says so, unlabeled ones by
``crop_bottom``), box-filtered to ``2·THUMB`` pixels, its coarse shading removed (minus a Gaussian
blur of σ = 2 pixels, so images that share only a layout, e.g. horizontal coating layers, do not
correlate), box-filtered to ``THUMB``, centred and scaled to unit norm. The score of a pair is the
largest correlation over the 8 rotations/flips of one thumbnail. Measured with ``data check``: on
MetalDAM the 32 true pairs score ≥ 0.96 and every other pair ≤ 0.08; on NASA EBC no pair exceeds
0.07. ``THRESHOLD`` = 0.5 sits in that gap; ``[unlabeled] neardup_threshold`` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.core.errors import BenchError
from bench.data.cards import DatasetCard
from bench.data.filecache import cached_array, file_key
from bench.data.images import decode_all
from bench.data.sources import FileSource

THUMB = 64
THRESHOLD = 0.5
BLUR_SIGMA = 2.0
TRANSFORMS = ("identity", "flip", "rot90", "rot90+flip", "rot180", "rot180+flip", "rot270",
              "rot270+flip")  # fmt: skip


_SCANS: dict[tuple[object, ...], Scan] = {}


@dataclass(frozen=True)
class Item:
    """One image: ``name`` is a labeled stem or ``unlabeled/<path in the dataset folder>``."""

    name: str
    path: Path
    keep_rows: int | None = None
    """Rows kept from the top (the rest is the instrument band); None keeps all."""
    crop_bottom: int = 0

    @property
    def labeled(self) -> bool:
        return not self.name.startswith("unlabeled/")


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    score: float
    transform: str


@dataclass(frozen=True)
class Scan:
    """Every pair of a card's images above the threshold, and the gap around it."""

    names: tuple[str, ...]
    pairs: tuple[Pair, ...]
    threshold: float
    lowest_pair: float | None
    """The smallest score among the pairs (None: no pair)."""
    highest_other: float | None
    """The largest score among all other pairs of distinct images."""

    def partners(self, name: str) -> set[str]:
        return {p.b if p.a == name else p.a for p in self.pairs if name in (p.a, p.b)}

    def closure(self, names: set[str]) -> set[str]:
        """``names`` and every image linked to them through a chain of near-duplicate pairs."""
        seen, todo = set(names), list(names)
        while todo:
            for other in self.partners(todo.pop()):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return seen


def thumbnail(item: Item) -> np.ndarray:
    """The item's centred, unit-norm ``THUMB``×``THUMB`` thumbnail (float32), cached per file."""
    return cached_array(
        item.path,
        "thumbs",
        lambda p: _thumbnail(p, item),
        THUMB,
        BLUR_SIGMA,
        item.keep_rows,
        item.crop_bottom,
    )


def _thumbnail(path: Path, item: Item) -> np.ndarray:
    try:
        with Image.open(path) as img:
            gray = img.convert("F") if img.mode.startswith(("I", "F")) else img.convert("L")
            width, height = gray.size
            rows = item.keep_rows if item.keep_rows is not None else height - item.crop_bottom
            large = gray.crop((0, 0, width, max(1, rows))).resize(
                (2 * THUMB,) * 2, Image.Resampling.BOX
            )
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BenchError(f"image {path} cannot be read (corrupt or not an image): {exc}") from None
    detail = np.asarray(large, dtype=np.float64)
    from scipy.ndimage import gaussian_filter  # scipy loads only when thumbnails are computed

    detail = detail - gaussian_filter(detail, BLUR_SIGMA)
    arr = detail.reshape(THUMB, 2, THUMB, 2).mean(axis=(1, 3))
    arr = arr - arr.mean()
    norm = np.linalg.norm(arr)
    return (arr / norm if norm > 0 else arr).astype(np.float32)


def _dihedral(thumb: np.ndarray) -> list[np.ndarray]:
    out = []
    for k in range(4):
        rotated = np.rot90(thumb, k)
        out += [rotated, rotated[:, ::-1]]
    return out


def card_items(card: DatasetCard, data_root: Path) -> list[Item]:
    """The card's labeled images (every stem of every split list) and its unlabeled files."""
    source = FileSource(card, data_root)
    stems: dict[str, None] = {}
    for split in card.splits:
        lists = source.split_lists(split)
        for part in (lists.train, lists.val or [], lists.test):
            stems.update(dict.fromkeys(part))
    items = []
    crop = card.layout is not None and card.layout.crop_image_to_mask
    for stem in stems:
        keep = _height(source.mask_path(stem)) if crop else None
        items.append(Item(stem, source.image_path(stem), keep_rows=keep))
    spec = card.unlabeled
    if spec is not None and spec.images is not None:
        for path in source.unlabeled_files():
            name = unlabeled_name(path)
            items.append(Item(name, path, crop_bottom=spec.crop_bottom))
    return items


def unlabeled_name(path: Path) -> str:
    """How an unlabeled file is named in pairs, pools and ``[unlabeled] exclude``."""
    return f"unlabeled/{path.name}"


def _height(path: Path) -> int:
    try:
        with Image.open(path) as img:
            return img.size[1]
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BenchError(f"mask {path} cannot be read (corrupt or not an image): {exc}") from None


def threshold_of(card: DatasetCard) -> float:
    return card.unlabeled.neardup_threshold if card.unlabeled else THRESHOLD


def scan(items: list[Item], threshold: float = THRESHOLD) -> Scan:
    """Score every pair of ``items``; pairs at or above ``threshold`` are near-duplicates."""
    names = tuple(i.name for i in items)
    if len(items) < 2:
        return Scan(names, (), threshold, None, None)
    thumbs = [_dihedral(t) for t in decode_all(thumbnail, items)]
    flat = np.stack([t[0].ravel() for t in thumbs])  # (n, d)
    scores = np.full((len(items), len(items)), -np.inf, dtype=np.float32)
    best = np.zeros_like(scores, dtype=np.int64)
    for t in range(len(TRANSFORMS)):
        moved = np.stack([d[t].ravel() for d in thumbs])
        s = flat @ moved.T
        better = s > scores
        scores[better], best[better] = s[better], t
    upper = np.triu(np.ones_like(scores, dtype=bool), k=1)
    flipped = scores < scores.T  # the best over transforms, either way round
    scores, best = np.where(flipped, scores.T, scores), np.where(flipped, best.T, best)
    hit = upper & (scores >= threshold)
    pairs = tuple(
        sorted(
            (
                Pair(names[i], names[j], float(scores[i, j]), TRANSFORMS[best[i, j]])
                for i, j in zip(*np.nonzero(hit), strict=True)
            ),
            key=lambda p: -p.score,
        )
    )
    rest = scores[upper & ~hit]
    return Scan(
        names,
        pairs,
        threshold,
        min((p.score for p in pairs), default=None),
        float(rest.max()) if rest.size else None,
    )


def scan_card(card: DatasetCard, data_root: Path) -> Scan:
    """The near-duplicate pairs among all of the card's images (labeled and unlabeled); kept in
    memory while no file changes."""
    items = card_items(card, data_root)
    key = (threshold_of(card), tuple((i, file_key(i.path)) for i in items))
    if key not in _SCANS:
        _SCANS[key] = scan(items, key[0])
    return _SCANS[key]
