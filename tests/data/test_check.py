"""bench.data.check: real prepared data passes; broken copies are reported file by file."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data.cards import load_card, parse_card
from bench.data.check import check_dataset
from tests.helpers.paths import shared_data_path

SHARED = shared_data_path()
needs_shared = pytest.mark.skipif(
    not (SHARED / "metaldam").is_dir() or not (SHARED / "nasa_micronet" / "EBC").is_dir(),
    reason=f"real prepared data not found at {SHARED} (set BENCH_SHARED_DATA)",
)

TINY_CARD = """
name = "tiny"
root = "tiny"
[classes]
ids = [0, 1, 2]
names = ["a", "b", "c"]
colors = [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
background = 0
[layout]
images = "images/{stem}.png"
masks = "masks/{stem}.png"
crop_image_to_mask = true
mask_channel = 0
[splits.main]
train = "splits/train.txt"
test = "splits/test.txt"
val = "splits/val.txt"
[unlabeled]
images = "unlabeled/*.png"
[fetch]
recipe = "files"
checksums = "tiny.sha256"
[variants.binary]
merge = { "2" = 1 }
[variants.binary.classes]
ids = [0, 1]
names = ["a", "b+c"]
colors = [[0, 0, 0], [1, 1, 1]]
"""


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """A valid tiny dataset: (card path, data root)."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "tiny.toml").write_text(TINY_CARD)
    root = tmp_path / "data" / "tiny"
    rng = np.random.default_rng(0)
    splits = {"train": ["s#0", "s#1"], "val": ["s#2"], "test": ["s#3"]}
    for split, stems in splits.items():
        for stem in stems:
            _save(root / "images" / f"{stem}.png", rng.integers(0, 255, (12, 10)))  # cropped
            _save(root / "masks" / f"{stem}.png", rng.integers(0, 3, (10, 10)))
        (root / "splits").mkdir(exist_ok=True)
        (root / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    _save(root / "unlabeled" / "u0.png", rng.integers(0, 255, (12, 10)))
    digest = hashlib.sha256((root / "images" / "s#0.png").read_bytes()).hexdigest()
    (cards / "tiny.sha256").write_text(f"{digest}  images/s#0.png\n")
    return cards / "tiny.toml", tmp_path / "data"


def test_tiny_dataset_is_clean(tiny: tuple[Path, Path]) -> None:
    card_path, data_root = tiny
    assert check_dataset(parse_card(card_path), data_root) == []


def test_missing_root_says_how_to_fetch(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    (problem,) = check_dataset(parse_card(tiny[0]), tmp_path / "elsewhere")
    assert str(tmp_path / "elsewhere" / "tiny") in problem
    assert "python -m bench data fetch tiny" in problem and "BENCH_DATA_ROOT" in problem


def test_each_problem_names_its_file(tiny: tuple[Path, Path]) -> None:
    card_path, data_root = tiny
    root = data_root / "tiny"
    _save(root / "masks" / "s#0.png", np.full((10, 10), 9))  # bad class id
    _save(root / "masks" / "s#1.png", np.zeros((14, 10)))  # taller than its image
    (root / "images" / "s#2.png").unlink()  # listed stem without image
    (root / "splits" / "test.txt").unlink()  # split list missing
    _save(root / "images" / "s#0.png", np.zeros((12, 10)))  # checksum mismatch
    (root / "unlabeled" / "u0.png").unlink()
    problems = check_dataset(parse_card(card_path), data_root)
    expected = {
        "masks/s#0.png": "mask values [9]",
        "masks/s#1.png": "mask is 10x14 but image s#1.png is 10x12",
        "images/s#2.png": "image missing",
        "splits/test.txt": "split list missing",
        "images/s#0.png": "sha256 mismatch",
        "unlabeled/*.png": "no unlabeled images",
    }
    for rel, text in expected.items():
        assert any(str(root / rel) in p and text in p for p in problems), (rel, problems)


def test_multichannel_masks_and_variants(tiny: tuple[Path, Path]) -> None:
    card_path, data_root = tiny
    mask_path = data_root / "tiny" / "masks" / "s#0.png"
    mask = np.asarray(Image.open(mask_path))
    _save(mask_path, np.stack([mask] * 3, axis=-1))  # RGB with equal channels: fine
    assert check_dataset(parse_card(card_path), data_root) == []
    # the binary variant merges 2 into 1: raw mask value 2 is still valid
    assert check_dataset(parse_card(card_path, "binary"), data_root) == []
    rgb = np.stack([mask, mask, (mask + 1) % 3], axis=-1)
    _save(mask_path, rgb)
    (problem,) = check_dataset(parse_card(card_path), data_root)
    assert str(mask_path) in problem and "channels that differ" in problem


@needs_shared
@pytest.mark.parametrize("name", ["metaldam", "ebc1", "ebc2", "ebc3"])
def test_real_data_is_clean(name: str) -> None:
    assert check_dataset(load_card(name), SHARED) == []


def _writable_copy(src: Path, dst: Path, ignore: list[str] = ()) -> Path:
    """Copy a (read-only) tree and make the copy writable."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*ignore))
    for path in [dst, *dst.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return dst


@needs_shared
def test_corrupted_copy_of_real_ebc(tmp_path: Path) -> None:
    root = _writable_copy(SHARED / "nasa_micronet" / "EBC", tmp_path / "nasa_micronet" / "EBC")
    stems = (root / "splits" / "EBC1_test.txt").read_text().split()
    bad_value, bad_size = root / "masks" / f"{stems[0]}.png", root / "masks" / f"{stems[1]}.png"
    mask = np.asarray(Image.open(bad_value)).copy()
    mask[0, 0] = 9
    _save(bad_value, mask)
    _save(bad_size, np.zeros((512, 512)))
    problems = check_dataset(load_card("ebc1"), tmp_path)
    assert len(problems) == 2, problems
    assert any(str(bad_value) in p and "[9]" in p for p in problems)
    assert any(str(bad_size) in p and "512x512" in p and "1024x1024" in p for p in problems)


@needs_shared
def test_corrupted_copy_of_real_metaldam(tmp_path: Path) -> None:
    root = _writable_copy(SHARED / "metaldam", tmp_path / "metaldam", ignore=["unlabeled"])
    coloured, label = (
        root / "coloured_labels" / "micrograph3.png",
        root / "labels" / "micrograph4.png",
    )
    with open(coloured, "ab") as fh:
        fh.write(b"\0")
    _save(label, np.zeros((961, 1280)))  # one row taller than its 1280x960 image
    found = check_dataset(load_card("metaldam"), tmp_path)
    missing_pool = [p for p in found if "/unlabeled/micrograph" in p]
    assert len(missing_pool) == 164 and all(
        "missing (listed in metaldam.sha256)" in p for p in missing_pool
    )
    problems = [p for p in found if p not in missing_pool]
    assert len(problems) == 4, problems
    assert any(str(coloured) in p and "sha256 mismatch" in p for p in problems)
    assert any(str(label) in p and "sha256 mismatch" in p for p in problems)
    assert any(
        str(label) in p and "mask is 1280x961 but image micrograph4.jpg is 1280x960" in p
        for p in problems
    )
    assert not any("unlabeled" in p for p in problems[:-1]) and "unlabeled/*.png" in problems[-1]
