"""Where a card's images come from: files under a data root, or a generator in memory.

``source_for(card, data_root)`` returns the card's ``Source``. Everything above this module (the
protocol, the SSL pool, checks, runs) asks the source for split lists, labeled images and the
unlabeled pool, and never looks at how the card stores them.

- ``FileSource``: the card's folder ``<data_root>/<card.root>``: split list files, image/mask files
  by the ``[layout]`` templates, unlabeled files by the ``[unlabeled] images`` glob.
- ``GeneratedSource``: a procedural card (``generator = {...}``, see ``bench.data.synthetic``):
  one split, ``generated``, with parts ``train_000``…, ``val_000``…, ``test_000``…; each part uses
  its own seed so parts never share images.
"""

from __future__ import annotations

import glob
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError
from bench.data.cards import CARDS_DIR, DatasetCard
from bench.data.images import LabeledImage, decode_all, fit_image_to_mask, read_gray, read_mask
from bench.data.synthetic import generate_labeled, generate_unlabeled

DATA_ROOT_ENV = "BENCH_DATA_ROOT"
GENERATED_SPLIT = "generated"


def resolve_data_root(arg: str | os.PathLike[str] | None = None) -> Path:
    """``--data-root``, else ``$BENCH_DATA_ROOT``, else the project's ``datasets/`` folder."""
    if arg:
        return Path(arg).expanduser()
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    return CARDS_DIR


@dataclass(frozen=True)
class SplitLists:
    """The stems a split names: train and test, and val when the split lists one."""

    train: list[str]
    test: list[str]
    val: list[str] | None
    files: dict[str, str]
    """Where each list comes from, by part (``train``, ``val``, ``test``), for messages."""


class Source(ABC):
    """A card's images."""

    def __init__(self, card: DatasetCard) -> None:
        self.card = card

    @abstractmethod
    def split_name(self, requested: str | None) -> str:
        """The split a run uses (the card's default when ``requested`` is None)."""

    @abstractmethod
    def split_lists(self, split: str) -> SplitLists:
        """The stems of ``split``'s lists."""

    @abstractmethod
    def labeled(self, stems: list[str]) -> list[LabeledImage]:
        """Image/mask pairs, with the card's layout rules applied."""

    @abstractmethod
    def unlabeled_images(self, limit: int | None = None) -> list[np.ndarray]:
        """The card's separate unlabeled images (not a split's training images)."""

    @abstractmethod
    def unlabeled_files(self) -> list[Path]:
        """The files behind ``unlabeled_images`` (empty for generated images)."""

    @abstractmethod
    def presence(self) -> str:
        """``generated``, ``yes`` or ``no``: whether the data is there to run on."""


class FileSource(Source):
    """Images and masks under ``<data_root>/<card.root>``."""

    def __init__(self, card: DatasetCard, data_root: Path) -> None:
        super().__init__(card)
        self.data_root = Path(data_root)

    @property
    def folder(self) -> Path:
        folder = self.data_root / self.card.root
        if not folder.is_dir():
            raise BenchError(
                f"dataset '{self.card.name}' not found: {folder} does not exist. Point --data-root "
                f"or ${DATA_ROOT_ENV} at a prepared data root, or run `python -m bench data fetch "
                f"{self.card.name}` (README 'Get the data'); without data or internet, "
                "`--dataset synthetic` runs the whole pipeline on generated images"
            )
        return folder

    def split_name(self, requested: str | None) -> str:
        return self.card.split(requested).name

    def split_lists(self, split: str) -> SplitLists:
        spec = self.card.split(split)
        folder = self.folder
        files = {
            part: folder / name
            for part, name in (("train", spec.train), ("val", spec.val), ("test", spec.test))
            if name is not None
        }
        train, test = read_list(files["train"]), read_list(files["test"])
        val = read_list(files["val"]) if "val" in files else None
        return SplitLists(train, test, val, {part: str(path) for part, path in files.items()})

    def image_path(self, stem: str) -> Path:
        assert self.card.layout is not None
        return self.folder / self.card.layout.images.format(stem=stem)

    def mask_path(self, stem: str) -> Path:
        assert self.card.layout is not None
        return self.folder / self.card.layout.masks.format(stem=stem)

    def labeled(self, stems: list[str]) -> list[LabeledImage]:
        return decode_all(self._labeled_one, stems)

    def _labeled_one(self, stem: str) -> LabeledImage:
        image_path, mask_path = self.image_path(stem), self.mask_path(stem)
        image, mask = read_gray(image_path, self.card), read_mask(mask_path, self.card)
        return LabeledImage(
            stem, fit_image_to_mask(image, mask, self.card, image_path, mask_path), mask
        )

    def unlabeled_files(self) -> list[Path]:
        spec = self.card.unlabeled
        if spec is None or spec.images is None:
            return []
        folder = self.folder
        files = sorted(Path(p) for p in glob.glob(str(folder / spec.images)))
        if not files:
            raise BenchError(
                f"no unlabeled images match {folder / spec.images} (card {self.card.path.name})"
            )
        return files

    def unlabeled_images(self, limit: int | None = None) -> list[np.ndarray]:
        return self.read_unlabeled(self.unlabeled_files()[:limit])

    def read_unlabeled(self, files: list[Path]) -> list[np.ndarray]:
        """Unlabeled ``files`` as uint8 grayscale images, the instrument band
        (``[unlabeled] crop_bottom``) cut off."""
        crop = self.card.unlabeled.crop_bottom if self.card.unlabeled else 0
        return decode_all(
            lambda f: np.ascontiguousarray(read_gray(f, self.card)[: -crop or None]), files
        )

    def presence(self) -> str:
        """``yes`` only when every file the card names is there (split lists, each listed image
        and mask, at least one unlabeled file), the file list ``data check`` verifies;
        ``incomplete`` for a folder missing some; ``no`` without the folder."""
        if not (self.data_root / self.card.root).is_dir():
            return "no"
        try:
            for split in self.card.splits:
                lists = self.split_lists(split)
                for stem in {*lists.train, *(lists.val or []), *lists.test}:
                    if not (self.image_path(stem).is_file() and self.mask_path(stem).is_file()):
                        return "incomplete"
            self.unlabeled_files()
        except BenchError:
            return "incomplete"
        return "yes"


class GeneratedSource(Source):
    """Procedural images from the card's ``generator`` table."""

    PARTS = ("train", "val", "test")

    def split_name(self, requested: str | None) -> str:
        if requested and requested != GENERATED_SPLIT:
            raise BenchError(
                f"{self.card.path}: the generated dataset '{self.card.name}' has no "
                f"splits (only '{GENERATED_SPLIT}')"
            )
        return GENERATED_SPLIT

    def stems(self, part: str) -> list[str]:
        return [f"{part}_{i:03d}" for i in range(int(self.card.generator[part]))]

    def split_lists(self, split: str) -> SplitLists:
        where = f"{self.card.path} (generated)"
        return SplitLists(
            self.stems("train"),
            self.stems("test"),
            self.stems("val"),
            dict.fromkeys(self.PARTS, where),
        )

    def labeled(self, stems: list[str]) -> list[LabeledImage]:
        gen = self.card.generator
        out = []
        for stem in stems:
            part, _, index = stem.partition("_")
            if part not in self.PARTS or not index.isdigit() or int(index) >= int(gen[part]):
                raise BenchError(f"{self.card.path}: no synthetic image '{stem}'")
            pairs = _generated_part(
                part, int(gen[part]), int(gen["size"]), int(gen["seed"]), self.card.num_classes
            )
            image, mask = pairs[int(index)]
            out.append(LabeledImage(stem, image, mask))
        return out

    def unlabeled_images(self, limit: int | None = None) -> list[np.ndarray]:
        gen = self.card.generator
        count = int(gen["unlabeled"]) if limit is None else min(limit, int(gen["unlabeled"]))
        return generate_unlabeled(count, int(gen["size"]), int(gen["seed"]) * 10)

    def unlabeled_files(self) -> list[Path]:
        return []

    def presence(self) -> str:
        return "generated"


@lru_cache(maxsize=8)
def _generated_part(
    part: str, count: int, size: int, seed: int, classes: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    offset = GeneratedSource.PARTS.index(part) + 1
    return generate_labeled(count, size, seed * 10 + offset, num_classes=classes)


def source_for(card: DatasetCard, data_root: Path | None = None) -> Source:
    """The card's images: generated in memory, or files under ``data_root`` (default: resolved)."""
    if card.generator:
        return GeneratedSource(card)
    return FileSource(card, data_root if data_root is not None else resolve_data_root())


def load_labeled(card: DatasetCard, data_root: Path, stems: list[str]) -> list[LabeledImage]:
    """Image/mask pairs of ``stems`` (``source_for(card, data_root).labeled``)."""
    return source_for(card, data_root).labeled(stems)


def dataset_dir(card: DatasetCard, data_root: Path) -> Path:
    """The card's folder under ``data_root``; BenchError saying how to get it when missing."""
    return FileSource(card, data_root).folder


def read_list(path: Path) -> list[str]:
    """A split file: one image stem per line; blank lines ignored."""
    if not path.is_file():
        raise BenchError(f"split list {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
