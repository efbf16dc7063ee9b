"""Loading labeled and unlabeled micrographs as described by a dataset card.

Images are 8-bit grayscale ``H×W`` arrays at native resolution; masks are ``H×W`` class ids.
Every problem a user can cause (missing root, corrupt file, size mismatch, unknown class id) is a
``BenchError`` that names the file.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.cards import CARDS_DIR, DatasetCard
from bench.errors import BenchError

DATA_ROOT_ENV = "BENCH_DATA_ROOT"


@dataclass(frozen=True)
class LabeledImage:
    stem: str
    image: np.ndarray
    mask: np.ndarray


def resolve_data_root(arg: str | os.PathLike[str] | None = None) -> Path:
    """``--data-root``, else ``$BENCH_DATA_ROOT``, else the project's ``datasets/`` folder."""
    if arg:
        return Path(arg).expanduser()
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    return CARDS_DIR


def dataset_dir(card: DatasetCard, data_root: Path) -> Path:
    folder = data_root / card.root
    if not folder.is_dir():
        raise BenchError(
            f"dataset '{card.name}' not found: {folder} does not exist. Point --data-root or "
            f"${DATA_ROOT_ENV} at a prepared data root, or run `python -m bench data fetch "
            f"{card.name}`"
        )
    return folder


def read_list(path: Path) -> list[str]:
    """A split file: one image stem per line; blank lines ignored."""
    if not path.is_file():
        raise BenchError(f"split list {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_gray(path: Path) -> np.ndarray:
    """An image file as an 8-bit grayscale array."""
    if not path.is_file():
        raise BenchError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            return np.array(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BenchError(f"image {path} cannot be read (corrupt or not an image): {exc}") from None


def read_mask(path: Path, card: DatasetCard) -> np.ndarray:
    """A class-id mask; multi-channel masks must have equal channels (the card's channel is used)."""
    if not path.is_file():
        raise BenchError(f"mask {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)  # palette ('P') masks give their indices: the class ids
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BenchError(f"mask {path} cannot be read (corrupt or not an image): {exc}") from None
    if arr.ndim == 3:
        channel = card.layout.mask_channel if card.layout else 0
        if not -arr.shape[2] <= channel < arr.shape[2]:
            raise BenchError(
                f"mask {path} has {arr.shape[2]} channels; the card {card.path.name} asks for "
                f"layout.mask_channel = {channel}"
            )
        first = arr[..., 0]
        if any(not np.array_equal(first, arr[..., c]) for c in range(1, arr.shape[2])):
            raise BenchError(
                f"mask {path} has {arr.shape[2]} channels that differ; a mask must hold one "
                "class id per pixel"
            )
        arr = arr[..., channel]
    arr = arr.astype(np.int64)
    return _apply_merge(arr, card, path)


def _apply_merge(mask: np.ndarray, card: DatasetCard, path: Path) -> np.ndarray:
    raw_ids = set(int(v) for v in np.unique(mask))
    if card.merge:
        lut = np.arange(max(max(raw_ids) + 1, 256), dtype=np.int64)
        for src, dst in card.merge:
            lut[src] = dst
        mask = lut[mask]
    bad = sorted(int(v) for v in np.unique(mask) if int(v) not in card.class_ids)
    if bad:
        raise BenchError(
            f"mask {path} contains class id(s) {bad} not in the card {card.path.name} "
            f"(ids {list(card.class_ids)})"
        )
    return mask.astype(np.uint8)


def load_labeled(card: DatasetCard, data_root: Path, stems: list[str]) -> list[LabeledImage]:
    """Load image/mask pairs, applying the card's layout rules (e.g. crop to the mask height)."""
    if card.generator:
        from bench.synthetic_data import synthetic_labeled

        return synthetic_labeled(card, stems)
    folder = dataset_dir(card, data_root)
    assert card.layout is not None
    pairs = []
    for stem in stems:
        image_path = folder / card.layout.images.format(stem=stem)
        mask_path = folder / card.layout.masks.format(stem=stem)
        image, mask = read_gray(image_path), read_mask(mask_path, card)
        image = _fit_image_to_mask(image, mask, card, image_path, mask_path)
        pairs.append(LabeledImage(stem, image, mask))
    return pairs


def _fit_image_to_mask(
    image: np.ndarray, mask: np.ndarray, card: DatasetCard, image_path: Path, mask_path: Path
) -> np.ndarray:
    crop = card.layout is not None and card.layout.crop_image_to_mask
    fits = image.shape == mask.shape or (
        crop and image.shape[1] == mask.shape[1] and mask.shape[0] <= image.shape[0]
    )
    if not fits:
        rule = " (the card crops images to the mask height)" if crop else ""
        raise BenchError(
            f"mask {mask_path} is {mask.shape[1]}×{mask.shape[0]} but image {image_path} is "
            f"{image.shape[1]}×{image.shape[0]}{rule}"
        )
    return np.ascontiguousarray(image[: mask.shape[0]])


def load_unlabeled(card: DatasetCard, data_root: Path, limit: int | None = None,
                   split: str | None = None) -> list[np.ndarray]:
    """The SSL pool's images (uint8 grayscale), instrument band removed; ``split`` matters for
    cards whose pool is a split's training images (``from_split``)."""
    if card.generator:
        from bench.synthetic_data import synthetic_unlabeled

        return synthetic_unlabeled(card, limit)
    if card.unlabeled is not None and card.unlabeled.from_split:
        stems = pool_stems(card, data_root, split)[:limit]
        return [item.image for item in load_labeled(card, data_root, stems)]  # layout rules apply
    files = unlabeled_files(card, data_root, split)[:limit]
    crop = card.unlabeled.crop_bottom
    return [np.ascontiguousarray(read_gray(f)[: -crop or None]) for f in files]


def unlabeled_files(card: DatasetCard, data_root: Path, split: str | None = None) -> list[Path]:
    """The files of the SSL pool (see ``load_unlabeled``)."""
    if card.unlabeled is None:
        raise BenchError(f"{card.path}: dataset '{card.name}' has no [unlabeled] pool for "
                         "pretraining; add one to the card (images = \"<glob>\" or "
                         "from_split = \"train\")")
    folder = dataset_dir(card, data_root)
    if card.unlabeled.from_split:
        assert card.layout is not None
        return [folder / card.layout.images.format(stem=s) for s in pool_stems(card, data_root, split)]
    files = sorted(Path(p) for p in glob.glob(str(folder / card.unlabeled.images)))
    if not files:
        raise BenchError(
            f"no unlabeled images match {folder / card.unlabeled.images} (card {card.path.name})"
        )
    return files


def pool_stems(card: DatasetCard, data_root: Path, split: str | None) -> list[str]:
    """The training images of ``split`` that shots are drawn from (validation held out)."""
    from bench.protocol import partition  # protocol imports this module

    return partition(card, data_root, split).pool
