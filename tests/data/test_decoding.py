"""Decoding never silently damages data: 16-bit and float images by a stated rule, colour by the
card, lossy conversions noted; `data check` decodes every file as loading does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.core.errors import BenchError
from bench.data.cards import LayoutSpec, parse_card
from bench.data.check import check_dataset
from bench.data.images import decode_all, read_gray
from tests.data.test_neardup import CARD, _dataset


def _card(tmp_path: Path, **layout: object):
    path = tmp_path / "dup.toml"
    path.write_text(CARD)
    card = parse_card(path)
    assert card.layout is not None
    return dataclasses.replace(card, layout=dataclasses.replace(card.layout, **layout))


def _sixteen_bit(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_scale_by_the_full_range(tmp_path: Path, suffix: str, capsys) -> None:
    values = np.array([[0, 257, 32896], [65535, 1000, 60000]])
    path = _sixteen_bit(tmp_path / f"sem{suffix}", values)
    gray = read_gray(path, _card(tmp_path))
    assert gray.dtype == np.uint8
    assert gray.tolist() == np.round(values * 255 / 65535).astype(int).tolist()
    assert (gray == 255).mean() < 0.2  # not the 94 % white of convert("L")
    assert "scaled to 8 bits by high_bit_depth = 'full'" in capsys.readouterr().err


def test_16_bit_rules_bit_depth_and_stretch(tmp_path: Path) -> None:
    values = np.array([[0, 2048, 4095], [100, 200, 300]])  # a 12-bit detector
    path = _sixteen_bit(tmp_path / "twelve.tif", values)
    twelve = read_gray(path, _card(tmp_path, high_bit_depth=12))
    assert twelve.tolist() == np.round(values * 255 / 4095).astype(int).tolist()
    stretched = read_gray(path, _card(tmp_path, high_bit_depth="stretch"))
    assert stretched.min() == 0 and stretched.max() == 255
    with pytest.raises(BenchError, match=r"values up to 4095, beyond high_bit_depth = 10"):
        read_gray(path, _card(tmp_path, high_bit_depth=10))
    dark = _sixteen_bit(tmp_path / "eight_in_sixteen.png", np.array([[0, 120], [200, 255]]))
    with pytest.raises(BenchError, match=r"holds only values 0\.\.255.*would make it black"):
        read_gray(dark, _card(tmp_path))
    assert read_gray(dark, _card(tmp_path, high_bit_depth=8)).tolist() == [[0, 120], [200, 255]]


def test_float_images_and_colour_channels(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)).save(path)
    assert read_gray(path, _card(tmp_path)).tolist() == [[0, 128], [255, 64]]
    Image.fromarray(np.array([[0.0, 3.0]], np.float32)).save(path)
    with pytest.raises(BenchError, match=r"values 0\.\.3, not 0\.\.1"):
        read_gray(path, _card(tmp_path))
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.array([[[200, 10, 30]]], np.uint8)).save(rgb)
    assert read_gray(rgb, _card(tmp_path)).tolist() == [
        [round(0.299 * 200 + 0.587 * 10 + 0.114 * 30)]
    ]
    assert read_gray(rgb, _card(tmp_path, image_channel=1)).tolist() == [[10]]


def test_card_field_errors_for_decoding_options(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text(CARD.replace("crop_image_to_mask = true", 'high_bit_depth = "auto"'))
    with pytest.raises(BenchError, match=r"layout\.high_bit_depth must be"):
        parse_card(path)
    assert LayoutSpec("a{stem}", "b{stem}").high_bit_depth == "full"


def test_check_decodes_every_file_as_loading_does(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    card = _card(tmp_path)
    assert check_dataset(card, data) == []
    pool_file = data / "dup" / "unlabeled" / "u_other2.png"
    pool_file.write_bytes(pool_file.read_bytes()[:200])  # truncated: the header still reads
    mask = data / "dup" / "masks" / "s1.png"
    values = np.asarray(Image.open(mask))
    Image.fromarray(np.dstack([values] * 3 + [np.full_like(values, 255)]), "RGBA").save(mask)
    problems = check_dataset(card, data)
    assert any(str(pool_file) in p and "cannot be read" in p for p in problems), problems
    assert any(str(mask) in p and "channels that differ" in p for p in problems), problems


def test_files_decode_in_parallel_in_order_and_the_first_bad_file_is_named(tmp_path: Path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((4, 5), 40 * i, dtype=np.uint8)).save(paths[-1])
    assert [int(a[0, 0]) for a in decode_all(read_gray, paths)] == [0, 40, 80, 120, 160, 200]
    paths[4].write_bytes(b"not a png")
    paths[2].write_bytes(b"")
    with pytest.raises(BenchError, match="cannot be read") as info:
        decode_all(read_gray, paths)
    assert str(paths[2]) in str(info.value)  # the first bad file in order, not the first to fail
