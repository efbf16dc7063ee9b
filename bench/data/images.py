"""Decoding micrographs and masks: 8-bit grayscale ``H×W`` images, ``H×W`` class-id masks.

Every problem a user can cause (corrupt file, size mismatch, unknown class id) is a ``BenchError``
that names the file. The card's layout rules (crop the image to the mask height, take one channel
of a multi-channel mask, merge label ids of a variant) are applied here, and only here, so
loading and ``data check`` accept exactly the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.core.errors import BenchError
from bench.data.cards import DatasetCard


@dataclass(frozen=True)
class LabeledImage:
    stem: str
    image: np.ndarray
    mask: np.ndarray


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
    """A class-id mask; multi-channel masks need equal channels (the card's channel is used)."""
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
    raw_ids = {int(v) for v in np.unique(mask)}
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


def fit_image_to_mask(
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
