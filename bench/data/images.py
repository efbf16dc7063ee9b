"""Decoding micrographs and masks: 8-bit grayscale ``H×W`` images, ``H×W`` class-id masks.

Every problem a user can cause (corrupt file, size mismatch, unknown class id) is a ``BenchError``
that names the file. The card's layout rules (crop the image to the mask height, take one channel
of a multi-channel mask, merge label ids of a variant) are applied here, and only here, so
loading and ``data check`` accept exactly the same files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.core.cpus import cpu_count
from bench.core.errors import BenchError
from bench.data.cards import DatasetCard

T = TypeVar("T")
R = TypeVar("R")


def decode_all(decode: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[decode(item) for item in items]`` on one thread per usable core: PIL's decoders and
    zlib release the GIL, so files decode in parallel (fold0's 155 MetalDAM pool PNGs: 0.85 s on
    one thread, 0.46 s on two; idle 2-core AMD EPYC, files in the page cache). Order kept; the
    first item's error is raised."""
    items = list(items)
    workers = min(len(items), cpu_count())
    if workers <= 1:
        return [decode(item) for item in items]
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        return list(pool.map(decode, items))


@dataclass(frozen=True)
class LabeledImage:
    stem: str
    image: np.ndarray
    mask: np.ndarray


def read_gray(path: Path, card: DatasetCard | None = None) -> np.ndarray:
    """An image file as an 8-bit grayscale array, by the card's decoding rules.

    - 8-bit gray: as stored. Colour (RGB, palette; alpha dropped): ITU-R 601 luma, or the
      channel ``[layout] image_channel`` names.
    - 16-bit and 32-bit integer images, by ``[layout] high_bit_depth``: ``"full"`` (default:
      value × 255 / 65535, rounded), an integer N (an N-bit detector: value × 255 / (2^N − 1);
      a larger value is an error) or ``"stretch"`` (each image's min..max to 0..255). An image
      whose values all fit in 8 bits under ``"full"`` would turn black: an error asking for a rule.
    - Float images: values in 0..1 × 255 (``"stretch"`` for any other range; else an error).

    Every conversion that drops information (more than 8 bits, colour) prints one note per
    dataset, naming the rule.
    """
    if not path.is_file():
        raise BenchError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_gray8(img, path, card)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BenchError(f"image {path} cannot be read (corrupt or not an image): {exc}") from None


def _to_gray8(img: Image.Image, path: Path, card: DatasetCard | None) -> np.ndarray:
    layout = card.layout if card is not None else None
    rule = layout.high_bit_depth if layout is not None else "full"
    where = card.path.name if card is not None else "the card"
    if img.mode in ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "RGBX", "La"):
        channel = layout.image_channel if layout is not None else None
        if channel is None or img.mode in ("1", "L", "P"):
            return np.array(img.convert("L"), dtype=np.uint8)
        arr = np.asarray(img.convert("RGB") if img.mode not in ("RGB", "RGBA") else img)
        if not 0 <= channel < min(arr.shape[-1], 3):
            raise BenchError(
                f"image {path} has {arr.shape[-1]} channels; {where} asks for "
                f"layout.image_channel = {channel}"
            )
        return np.ascontiguousarray(arr[..., channel], dtype=np.uint8)
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr.mean(axis=-1)
    if arr.dtype.kind == "f":
        return _float_to_8(arr.astype(np.float64), path, rule, where)
    return _int_to_8(arr.astype(np.int64), path, rule, where, card)


def _int_to_8(
    arr: np.ndarray, path: Path, rule: str | int, where: str, card: DatasetCard | None
) -> np.ndarray:
    low, high = int(arr.min()), int(arr.max())
    if rule == "stretch":
        out = _stretch(arr.astype(np.float64))
    elif rule == "full":
        if high < 256:
            raise BenchError(
                f"image {path} is stored with more than 8 bits but holds only values "
                f"{low}..{high}; the default rule (value × 255 / 65535) would make it black. "
                f'Set [layout] high_bit_depth = 8 (or "stretch") in {where}'
            )
        if high > 65535:
            raise BenchError(
                f"image {path} holds values up to {high}, beyond 16 bits; set [layout] "
                f'high_bit_depth to its bit depth or "stretch" in {where}'
            )
        out = np.round(arr * (255 / 65535))
    else:
        top = (1 << int(rule)) - 1
        if high > top:
            raise BenchError(
                f"image {path} holds values up to {high}, beyond high_bit_depth = {rule} "
                f"(max {top}) of {where}"
            )
        out = np.round(arr * (255 / top))
    _note(card, f"{where}: images with more than 8 bits (e.g. {path.name}) are scaled to 8 "
          f"bits by high_bit_depth = {rule!r}")  # fmt: skip
    return out.astype(np.uint8)


def _float_to_8(arr: np.ndarray, path: Path, rule: str | int, where: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise BenchError(f"image {path} holds NaN or infinite values")
    if rule == "stretch":
        return _stretch(arr).astype(np.uint8)
    if arr.min() < 0 or arr.max() > 1:
        raise BenchError(
            f"image {path} is a float image with values {arr.min():g}..{arr.max():g}, not 0..1; "
            f'set [layout] high_bit_depth = "stretch" in {where}'
        )
    return np.round(arr * 255).astype(np.uint8)


def _stretch(arr: np.ndarray) -> np.ndarray:
    low, high = arr.min(), arr.max()
    return np.round((arr - low) * (255 / (high - low))) if high > low else np.zeros_like(arr)


_NOTED: set[str] = set()
_NOTED_LOCK = threading.Lock()


def _note(card: DatasetCard | None, message: str) -> None:
    """Print ``message`` once per process (one line per dataset and rule; decoding threads
    included)."""
    with _NOTED_LOCK:
        if message in _NOTED:
            return
        _NOTED.add(message)
    from bench.core.console import error

    error(message, label="note:")


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
    if arr.dtype.kind == "b" or (arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr))):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "ui" or (arr.dtype.kind == "i" and arr.size and arr.min() < 0):
        raise BenchError(f"mask {path} holds {arr.dtype} values; class ids are integers ≥ 0")
    return _apply_merge(arr, card, path)


def _present_ids(mask: np.ndarray) -> list[int]:
    """The distinct values of a non-negative integer mask (a count per value: no sort)."""
    return np.flatnonzero(np.bincount(mask.ravel())).tolist() if mask.size else []


def _apply_merge(mask: np.ndarray, card: DatasetCard, path: Path) -> np.ndarray:
    if card.merge:
        lut = np.arange(max(max(_present_ids(mask), default=0) + 1, 256), dtype=np.int64)
        for src, dst in card.merge:
            lut[src] = dst
        mask = lut[mask]
    bad = [v for v in _present_ids(mask) if v not in card.class_ids]
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
