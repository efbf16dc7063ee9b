"""The working scale: card declarations, the rules a run picks one by, and resizing to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.core.errors import BenchError
from bench.data.cards import NATIVE, ScaleSpec, load_card, parse_card
from bench.models.scale import check_rule, resize_image, resize_mask, resolve_scale


def test_cards_declare_native_and_protocols_give_their_resize() -> None:
    metaldam, ebc = load_card("metaldam"), load_card("ebc1:binary")
    assert metaldam.scale == NATIVE and ebc.scale == NATIVE
    assert resolve_scale(metaldam, "card") == NATIVE
    assert resolve_scale(metaldam, "protocol:matssl-paper") == ScaleSpec((256, 256))
    assert resolve_scale(ebc, "protocol:matssl-paper") == ScaleSpec((512, 512))
    assert resolve_scale(metaldam, "protocol:pscl-paper") == NATIVE  # evaluated natively
    assert resolve_scale(load_card("synthetic"), "protocol:matssl-paper") == NATIVE  # no such
    assert resolve_scale(metaldam, "352x512").describe() == "352x512"
    assert resolve_scale(metaldam, "native").describe() == "native"


@pytest.mark.parametrize("rule", ["big", "256", "16x16", "protocol:", "256x"])
def test_a_bad_rule_is_a_clear_error(rule: str) -> None:
    with pytest.raises(BenchError, match=f"scale '{rule}' is not one of card, native"):
        check_rule(rule)


def test_a_card_can_declare_a_resize_and_a_bad_one_names_the_field(tmp_path: Path) -> None:
    base = (Path(__file__).parents[2] / "datasets" / "synthetic.toml").read_text()
    card = tmp_path / "synthetic.toml"
    card.write_text(base.replace('working = "native"', "working = [96, 128]"))
    assert parse_card(card).scale == ScaleSpec((96, 128))
    card.write_text(base.replace('working = "native"', 'working = "half"'))
    with pytest.raises(BenchError, match=r"synthetic\.toml: bad dataset card: scale\.working"):
        parse_card(card)


def test_images_resize_as_pils_bilinear_and_masks_by_nearest() -> None:
    """The MatSSL seed resized PIL images (torchvision ``Resize``: PIL's antialiased bilinear)."""
    image = (np.random.default_rng(0).random((703, 1024)) * 255).astype(np.uint8)
    for size in ((256, 256), (352, 512), (800, 1100)):
        ours = resize_image(image, size).astype(int)
        pil = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR)).astype(int)
        assert ours.shape == size and np.abs(ours - pil).max() <= 1
    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    assert resize_mask(mask, (4, 4)).tolist() == [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 3, 3],
        [2, 2, 3, 3],
    ]
