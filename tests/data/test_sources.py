"""Loading images and masks: clear errors for bad inputs, the MetalDAM quirks, data-root lookup."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.core.errors import BenchError
from bench.data.cards import CARDS_DIR, DatasetCard, load_card, parse_card
from bench.data.images import read_gray, read_mask
from bench.data.pool import load_pool
from bench.data.protocol import partition
from bench.data.sources import DATA_ROOT_ENV, load_labeled, resolve_data_root

EBC_STEM = "040617#2_S127(2)0015"  # '#', '(' and ')' in the name, as upstream


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("L"))


def _card_copy(name: str, tmp_path: Path) -> DatasetCard:
    """A copy of a card in tmp_path: errors must name *this* card file."""
    path = tmp_path / "cards" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(CARDS_DIR / f"{name}.toml", path)
    return parse_card(path)


@pytest.fixture
def ebc_root(tmp_path: Path, shared_data: Path) -> tuple[DatasetCard, Path, Path]:
    """(card copy, data root, dataset folder) with one real EBC image/mask pair."""
    card = _card_copy("ebc1", tmp_path)
    root = tmp_path / "root"
    folder = root / card.root
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        shutil.copy(shared_data / card.root / sub / f"{EBC_STEM}.png", folder / sub)
    return card, root, folder


@pytest.fixture
def metaldam_root(tmp_path: Path, shared_data: Path) -> tuple[DatasetCard, Path, Path]:
    card = _card_copy("metaldam", tmp_path)
    root = tmp_path / "root"
    folder = root / card.root
    for sub, ext in (("images", "jpg"), ("labels", "png")):
        (folder / sub).mkdir(parents=True)
        shutil.copy(shared_data / card.root / sub / f"micrograph0.{ext}", folder / sub)
    return card, root, folder


def test_copied_pairs_load(ebc_root, metaldam_root) -> None:
    """The fixtures are sound: the error tests below fail only because of their corruption."""
    for card, root, _ in (ebc_root, metaldam_root):
        stem = EBC_STEM if card.name == "ebc1" else "micrograph0"
        (item,) = load_labeled(card, root, [stem])
        assert item.stem == stem and item.image.shape == item.mask.shape


# --- missing data ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["metaldam", "ebc1", "ebc1:binary"])
def test_missing_data_root_says_how_to_get_the_data(name: str, tmp_path: Path) -> None:
    card = load_card(name)
    root = tmp_path / "no-data-here"
    calls = [lambda: load_labeled(card, root, ["x"]), lambda: partition(card, root)]
    if card.unlabeled is not None:
        calls.append(lambda: load_pool(card, root))
    for call in calls:
        with pytest.raises(BenchError) as info:
            call()
        message = str(info.value)
        assert str(root / card.root) in message
        assert f"bench data fetch {card.name}" in message
        assert DATA_ROOT_ENV in message and "--data-root" in message
        assert "\n" not in message


def test_missing_files_name_the_file(ebc_root) -> None:
    card, root, folder = ebc_root
    (folder / "masks" / f"{EBC_STEM}.png").unlink()
    with pytest.raises(
        BenchError, match=r"mask .*masks/040617#2_S127\(2\)0015\.png does not exist"
    ):
        load_labeled(card, root, [EBC_STEM])
    with pytest.raises(BenchError, match=r"image .*images/other\.png does not exist"):
        load_labeled(card, root, ["other"])
    with pytest.raises(BenchError, match=r"split list .*EBC1_train\.txt does not exist"):
        partition(card, root)


# --- corrupt files -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_corrupt_image_is_one_clear_error(kind: str, metaldam_root, shared_data: Path) -> None:
    card, root, folder = metaldam_root
    image = folder / "images" / "micrograph0.jpg"
    data = image.read_bytes()
    image.write_bytes(
        {
            "garbage": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
            "truncated": data[: len(data) // 2],
            "empty": b"",
        }[kind]
    )
    with pytest.raises(BenchError, match="cannot be read") as info:
        load_labeled(card, root, ["micrograph0"])
    assert str(image) in str(info.value)


def test_corrupt_mask_is_one_clear_error(ebc_root) -> None:
    card, root, folder = ebc_root
    mask = folder / "masks" / f"{EBC_STEM}.png"
    mask.write_bytes(mask.read_bytes()[:3000])
    with pytest.raises(BenchError, match="cannot be read") as info:
        load_labeled(card, root, [EBC_STEM])
    assert f"mask {mask}" in str(info.value)


# --- inconsistent masks ------------------------------------------------------------------------


def test_mask_size_differs_from_image(ebc_root) -> None:
    card, root, folder = ebc_root
    mask = folder / "masks" / f"{EBC_STEM}.png"
    Image.fromarray(np.zeros((1000, 1024), np.uint8)).save(mask)
    with pytest.raises(BenchError) as info:
        load_labeled(card, root, [EBC_STEM])
    message = str(info.value)
    assert f"mask {mask} is 1024×1000" in message and "is 1024×1024" in message
    assert "crops" not in message  # EBC cards do not crop


@pytest.mark.parametrize("shape", [(800, 1024), (703, 1000)])
def test_cropping_card_still_needs_a_mask_that_fits(shape, metaldam_root) -> None:
    """Cropping to the mask height allows a shorter mask, never a taller or narrower one."""
    card, root, folder = metaldam_root
    Image.fromarray(np.zeros(shape, np.uint8)).save(folder / "labels" / "micrograph0.png")
    with pytest.raises(
        BenchError,
        match=r"micrograph0\.png is .* but image .*micrograph0\.jpg "
        r"is 1024×768 \(the card crops images to the mask height\)",
    ):
        load_labeled(card, root, ["micrograph0"])


def test_mask_with_unknown_class_id(ebc_root) -> None:
    card, root, folder = ebc_root
    mask_path = folder / "masks" / f"{EBC_STEM}.png"
    mask = _gray(mask_path)
    mask[:10, :10] = 3
    mask[-1, -1] = 7
    Image.fromarray(mask).save(mask_path)
    with pytest.raises(BenchError) as info:
        load_labeled(card, root, [EBC_STEM])
    message = str(info.value)
    assert str(mask_path) in message and "[3, 7]" in message
    assert card.path.name in message and "[0, 1, 2]" in message
    # the binary variant merges 2 into 1 but still knows nothing of 3
    binary = parse_card(card.path, "binary")
    with pytest.raises(BenchError, match=r"class id\(s\) \[3, 7\]"):
        load_labeled(binary, root, [EBC_STEM])


def test_multichannel_mask_with_differing_channels(ebc_root) -> None:
    card, root, folder = ebc_root
    mask_path = folder / "masks" / f"{EBC_STEM}.png"
    mask = _gray(mask_path)
    rgb = np.stack([mask, mask, mask], axis=-1)
    Image.fromarray(rgb).save(mask_path)
    (same,) = load_labeled(card, root, [EBC_STEM])  # equal channels: fine
    np.testing.assert_array_equal(same.mask, mask)
    rgb[5, 5, 2] = (rgb[5, 5, 0] + 1) % 3
    Image.fromarray(rgb).save(mask_path)
    with pytest.raises(BenchError, match=r"has 3 channels that differ") as info:
        load_labeled(card, root, [EBC_STEM])
    assert str(mask_path) in str(info.value)


def test_mask_channel_beyond_the_mask(ebc_root) -> None:
    card, root, folder = ebc_root
    text = card.path.read_text().replace(
        'masks = "masks/{stem}.png"', 'masks = "masks/{stem}.png"\nmask_channel = 3'
    )
    card.path.write_text(text)
    card = parse_card(card.path)
    mask_path = folder / "masks" / f"{EBC_STEM}.png"
    Image.fromarray(np.stack([_gray(mask_path)] * 3, axis=-1)).save(mask_path)
    with pytest.raises(
        BenchError,
        match=r"has 3 channels; the card ebc1\.toml asks for "
        r"layout\.mask_channel = 3",
    ):
        load_labeled(card, root, [EBC_STEM])


def test_palette_mask_gives_indices_not_colours(ebc_root) -> None:
    card, root, folder = ebc_root
    mask_path = folder / "masks" / f"{EBC_STEM}.png"
    mask = _gray(mask_path)
    pal = Image.fromarray(mask, mode="L").convert("P")
    pal.putpalette([0, 0, 0, 0, 170, 255, 255, 60, 0] + [0] * (256 * 3 - 9))
    pal.save(mask_path)
    (item,) = load_labeled(card, root, [EBC_STEM])
    np.testing.assert_array_equal(item.mask, mask)


# --- the real MetalDAM quirks ------------------------------------------------------------------


def test_micrograph26_rgb_label_loads_as_one_channel(shared_data: Path) -> None:
    card = load_card("metaldam")
    path = shared_data / "metaldam" / "labels" / "micrograph26.png"
    with Image.open(path) as img:
        raw = np.asarray(img)
    assert raw.ndim == 3 and raw.shape[2] == 3  # the quirk is still in the data
    mask = read_mask(path, card)
    assert mask.shape == raw.shape[:2] == (703, 1024)
    np.testing.assert_array_equal(mask, raw[..., 0])
    (item,) = load_labeled(card, shared_data, ["micrograph26"])
    assert item.image.shape == item.mask.shape == (703, 1024)


@pytest.mark.parametrize(
    ("stem", "raw_shape", "rows"),
    [
        ("micrograph0", (768, 1024), 703),
        ("micrograph15", (768, 1024), 702),
        ("micrograph19", (768, 1024), 702),
        ("micrograph4", (960, 1280), 895),
    ],
)
def test_metaldam_images_are_cropped_to_the_label_height(
    stem, raw_shape, rows, shared_data
) -> None:
    card = load_card("metaldam")
    raw = _gray(shared_data / "metaldam" / "images" / f"{stem}.jpg")
    assert raw.shape == raw_shape
    (item,) = load_labeled(card, shared_data, [stem])
    assert item.image.shape == item.mask.shape == (rows, raw_shape[1])
    np.testing.assert_array_equal(item.image, raw[:rows])  # the top rows, unchanged
    assert item.image.flags.c_contiguous
    assert read_gray(shared_data / "metaldam" / "images" / f"{stem}.jpg").shape == raw_shape


def _band_rows(image: np.ndarray) -> list[int]:
    """Rows of the instrument band: almost all white (its background) or black (its frame)."""
    return [
        r
        for r in range(image.shape[0])
        if (image[r] > 240).mean() > 0.9 or (image[r] < 15).mean() > 0.9
    ]


def test_unlabeled_images_lose_the_bottom_band(shared_data: Path) -> None:
    card = load_card("metaldam")
    assert card.unlabeled is not None and card.unlabeled.crop_bottom == 66
    images = load_pool(card, shared_data, limit=3)  # sorted: micrograph0, 1, 10
    names = ["micrograph0", "micrograph1", "micrograph10"]
    assert len(images) == 3
    for name, image in zip(names, images, strict=True):
        raw = _gray(shared_data / "metaldam" / "unlabeled" / f"{name}.png")
        assert _band_rows(raw), f"{name}: no band found in the raw frame"
        assert min(_band_rows(raw)) >= raw.shape[0] - 66
        assert image.shape == (raw.shape[0] - 66, raw.shape[1])
        assert not _band_rows(image)
        np.testing.assert_array_equal(image, raw[: raw.shape[0] - 66])
    assert {img.shape for img in images} == {(702, 1024), (894, 1280)}


def test_unlabeled_pool_missing_or_empty(tmp_path: Path) -> None:
    card = _card_copy("metaldam", tmp_path)
    (tmp_path / "root" / "metaldam" / "unlabeled").mkdir(parents=True)
    with pytest.raises(
        BenchError,
        match=r"no unlabeled images match .*unlabeled/\*\.png "
        r"\(card metaldam\.toml\)",
    ):
        load_pool(card, tmp_path / "root")
    no_pool = tmp_path / "cards" / "ebc1.toml"
    no_pool.write_text(
        (CARDS_DIR / "ebc1.toml").read_text().replace('[unlabeled]\nfrom_split = "train"', "")
    )
    with pytest.raises(
        BenchError,
        match=r"ebc1\.toml: dataset 'ebc1' has no \[unlabeled\] pool for "
        r"pretraining; add one to the card",
    ):
        load_pool(parse_card(no_pool), tmp_path / "root")


# --- data root -------------------------------------------------------------------------------


def test_data_root_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert DATA_ROOT_ENV not in os.environ  # conftest clears it
    assert resolve_data_root(None) == CARDS_DIR
    assert resolve_data_root("") == CARDS_DIR
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "from-env"))
    assert resolve_data_root(None) == tmp_path / "from-env"
    assert resolve_data_root(str(tmp_path / "from-arg")) == tmp_path / "from-arg"
    assert resolve_data_root(tmp_path / "from-arg") == tmp_path / "from-arg"
    monkeypatch.setenv(DATA_ROOT_ENV, "")
    assert resolve_data_root(None) == CARDS_DIR


def test_data_root_from_env_is_used_for_loading(
    monkeypatch: pytest.MonkeyPatch, shared_data: Path, tmp_path: Path
) -> None:
    card = load_card("ebc2")
    monkeypatch.setenv(DATA_ROOT_ENV, str(shared_data))
    assert len(partition(card, resolve_data_root(None)).pool) == 4
    with pytest.raises(BenchError, match="not found"):
        partition(card, resolve_data_root(str(tmp_path)))  # the argument wins over the env


# --- the synthetic card ------------------------------------------------------------------------


def test_synthetic_card_generates_its_images(tmp_path: Path) -> None:
    card = load_card("synthetic")
    items = load_labeled(card, tmp_path / "unused", ["train_000", "val_000", "test_002"])
    assert [i.stem for i in items] == ["train_000", "val_000", "test_002"]
    for item in items:
        assert item.image.shape == item.mask.shape == (128, 128)
        assert item.image.dtype == item.mask.dtype == np.uint8
        assert set(np.unique(item.mask)) <= set(card.class_ids)
    assert not np.array_equal(items[0].image, items[1].image)  # parts never share images
    again = load_labeled(card, tmp_path / "unused", ["train_000"])[0]
    np.testing.assert_array_equal(again.image, items[0].image)
    for bad in ("train_012", "val_x", "other_000"):
        with pytest.raises(BenchError, match=f"synthetic.toml: no synthetic image '{bad}'"):
            load_labeled(card, tmp_path, [bad])
    unlabeled = load_pool(card, tmp_path / "unused", limit=2)
    assert len(unlabeled) == 2 and unlabeled[0].shape == (128, 128)
    assert len(load_pool(card, tmp_path / "unused")) == 16
    assert not any(np.array_equal(u, items[0].image) for u in unlabeled)
