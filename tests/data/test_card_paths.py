"""Card search path, broken cards in `data list`, split integrity, data contents in run identity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.core.errors import BenchError
from bench.data.cards import CARDS_ENV, load_card
from bench.data.check import check_dataset
from bench.data.pool import pool_fingerprint
from bench.runner import RunEnv, RunSpec, prepare
from tests.data.test_neardup import CARD, _dataset


@pytest.fixture
def own_cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A folder with the card ``dup`` on $BENCH_CARDS and its data root."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "dup.toml").write_text(CARD)
    monkeypatch.setenv(CARDS_ENV, str(cards))
    return cards, _dataset(tmp_path)


def test_cards_are_found_on_the_search_path_after_the_projects(own_cards) -> None:
    cards, _ = own_cards
    assert load_card("dup").path == cards / "dup.toml"
    (cards / "metaldam.toml").write_text(CARD.replace('"dup"', '"metaldam"'))
    assert load_card("metaldam").path.parent.name == "datasets"  # the project's own first
    for bad in ("../dup", "a/b", ".."):
        with pytest.raises(BenchError, match="unknown dataset"):
            load_card(bad)


def test_cards_flag_and_a_broken_card_in_data_list(cli, tmp_path: Path) -> None:
    cards = tmp_path / "mine"
    cards.mkdir()
    (cards / "dup.toml").write_text(CARD)
    (cards / "typo.toml").write_text(CARD.replace('"dup"', '"typo"') + "[unlabelled]\nx = 1\n")
    try:
        code, out, _ = cli(["data", "list", "--cards", str(cards)])
    finally:
        os.environ.pop(CARDS_ENV, None)
    assert code == 1  # a broken card fails the listing, after listing every card
    assert "metaldam" in out and "dup" in out
    assert "broken:" in out and "unknown table 'unlabelled'" in out


def test_check_reports_overlapping_and_repeated_split_lists(own_cards) -> None:
    _, data = own_cards
    card = load_card("dup")
    assert check_dataset(card, data) == []
    (data / "dup" / "test.txt").write_text("t0\ns1\nt0\n")
    problems = check_dataset(card, data)
    assert any("test.txt: names t0 twice" in p for p in problems)
    assert any("test images also in train: s1" in p for p in problems)


def test_changed_image_contents_change_the_run_and_the_pretraining(own_cards, tmp_path) -> None:
    _, data = own_cards
    env = RunEnv(data, None, torch.device("cpu"), tmp_path / "cache")
    spec = RunSpec(method="simclr", dataset="dup", split="main", profile="smoke")
    before = prepare(spec, env)
    pool_before = pool_fingerprint(load_card("dup"), data, "main")
    # same names, other pixels: a test image and an unlabeled pool image
    test_image = data / "dup" / "images" / "t0.jpg"
    Image.open(test_image).rotate(180).save(test_image)
    pool_image = data / "dup" / "unlabeled" / "u_other1.png"
    Image.open(pool_image).rotate(180).save(pool_image)
    after = prepare(spec, RunEnv(data, None, torch.device("cpu"), tmp_path / "cache"))
    assert after.config["data"] != before.config["data"]
    assert after.hash != before.hash
    assert pool_fingerprint(load_card("dup"), data, "main")["digest"] != pool_before["digest"]
    assert after.config["pretrain"]["pool"] != before.config["pretrain"]["pool"]


def test_the_documented_minimal_card_parses(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "CONTRIBUTING.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mine.toml").write_text(block)
    card = load_card("mine", cards_dir=tmp_path)
    assert card.split("main").val_holdout == 2 and card.unlabeled is not None
    assert card.class_names == ("matrix", "precipitate")
