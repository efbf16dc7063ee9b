"""Near-duplicates: found across format, band and orientation; left out of every honest pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data.cards import load_card, parse_card
from bench.data.check import neardup_report
from bench.data.neardup import Item, scan, scan_card
from bench.data.pool import excluded, load_pool, pool_fingerprint, pool_members
from bench.data.protocol import partition
from bench.results.store import ResultStore
from bench.runner import RunEnv, RunSpec, _new_run, prepare

CARD = """
name = "dup"
root = "dup"
[classes]
ids = [0, 1]
names = ["a", "b"]
colors = [[0, 0, 0], [1, 1, 1]]
background = 0
[layout]
images = "images/{stem}.jpg"
masks = "masks/{stem}.png"
crop_image_to_mask = true
[splits.main]
train = "train.txt"
test = "test.txt"
val = "val.txt"
[unlabeled]
images = "unlabeled/*.png"
crop_bottom = 16
"""


def _texture(seed: int, shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (shape[0] // 4, shape[1] // 4)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize(shape[::-1], Image.BICUBIC))


def _dataset(tmp_path: Path) -> Path:
    """Labeled JPEGs t0 (test), v0 (val), s0..s2 (train) with a 16-row band; unlabeled PNGs: a
    flipped copy of t0, a copy of v0, a copy of that copy's twin chain, a copy of s0, and two
    unrelated frames."""
    root = tmp_path / "data" / "dup"
    band = np.full((16, 128), 255, np.uint8)
    frames = {name: _texture(i) for i, name in enumerate(["t0", "v0", "s0", "s1", "s2"])}
    for stem, pixels in frames.items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.vstack([pixels, band])).save(root / "images" / f"{stem}.jpg", quality=85)
        Image.fromarray((pixels > 128).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    (root / "unlabeled").mkdir()
    noisy = np.clip(frames["v0"].astype(int) + 6, 0, 255).astype(np.uint8)
    copies = {
        "u_t0_flipped": frames["t0"][:, ::-1],
        "u_v0": noisy,
        "u_s0": frames["s0"],
        "u_other1": _texture(100),
        "u_other2": _texture(101),
    }
    for name, pixels in copies.items():
        band_rows = np.zeros((16, 128), np.uint8)  # a different band than the labeled copies
        Image.fromarray(np.vstack([pixels, band_rows])).save(root / "unlabeled" / f"{name}.png")
    for name, stems in (("train", "v0 s0 s1 s2"), ("val", "v0"), ("test", "t0")):
        (root / f"{name}.txt").write_text("\n".join(stems.split()))
    return tmp_path / "data"


def _card(tmp_path: Path, extra: str = ""):
    path = tmp_path / "dup.toml"
    path.write_text(CARD + extra)
    return parse_card(path)


def test_pairs_are_found_across_format_band_and_flips_with_a_wide_gap(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    found = scan_card(_card(tmp_path), data)
    pairs = {(p.a, p.b): p for p in found.pairs}
    assert set(pairs) == {
        ("t0", "unlabeled/u_t0_flipped.png"),
        ("v0", "unlabeled/u_v0.png"),
        ("s0", "unlabeled/u_s0.png"),
    }
    assert pairs[("t0", "unlabeled/u_t0_flipped.png")].transform == "flip"
    assert found.lowest_pair is not None and found.lowest_pair > 0.9
    assert found.highest_other is not None and found.highest_other < 0.3


def test_an_honest_pool_leaves_out_near_duplicates_of_val_and_test_only(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    card = _card(tmp_path)
    honest = [name for name, _ in pool_members(card, data)]
    assert honest == ["unlabeled/u_other1.png", "unlabeled/u_other2.png", "unlabeled/u_s0.png"]
    assert len(pool_members(card, data, mode="transductive")) == 5
    assert len(load_pool(card, data)) == 3
    assert load_pool(card, data)[0].shape == (96, 128)  # band cut
    fp_honest, fp_all = (
        pool_fingerprint(card, data),
        pool_fingerprint(card, data, None, "transductive"),
    )
    assert fp_honest["files"] == 3 and fp_all["files"] == 5 and fp_honest != fp_all


def test_a_card_can_exclude_pool_images_explicitly(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    card = _card(tmp_path, 'exclude = ["unlabeled/u_other1.png"]\n')
    assert "unlabeled/u_other1.png" in excluded(card, data)
    assert [n for n, _ in pool_members(card, data)] == [
        "unlabeled/u_other2.png",
        "unlabeled/u_s0.png",
    ]
    bad = _card(tmp_path, 'exclude = ["unlabeled/nope.png"]\n')
    _, problems = neardup_report(bad, data)
    assert any("'unlabeled/nope.png', which is no pool image" in p for p in problems)


def test_a_training_image_duplicating_a_test_image_is_a_problem(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    Image.open(data / "dup" / "images" / "t0.jpg").save(data / "dup" / "images" / "s2.jpg")
    lines, problems = neardup_report(_card(tmp_path), data)
    assert any(line.startswith("gap: the pairs score ≥") for line in lines)
    assert any("s2 and t0 are near-duplicates" in p or "t0 and s2" in p for p in problems)


def test_a_constant_image_scores_zero_not_nan(tmp_path: Path) -> None:
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(flat)
    other = tmp_path / "other.png"
    Image.fromarray(_texture(3, (40, 40))).save(other)
    found = scan([Item("flat", flat), Item("other", other)])
    assert found.pairs == () and found.highest_other == 0.0


def test_every_metaldam_fold_pool_holds_no_near_duplicate_of_its_evaluation_images(
    shared_data: Path,
) -> None:
    card = load_card("metaldam")
    found = scan_card(card, shared_data)
    assert len(found.pairs) >= 28  # most labeled frames have an unlabeled twin
    assert found.lowest_pair is not None and found.highest_other is not None
    assert found.lowest_pair - found.highest_other > 0.5  # the threshold sits in a wide gap
    sizes = []
    for split in card.splits:
        part = partition(card, shared_data, split)
        pool = {name for name, _ in pool_members(card, shared_data, split)}
        for stem in [*part.val, *part.test]:
            assert not (found.partners(stem) & pool), (split, stem)
        assert "unlabeled/micrograph114.png" not in pool  # the card's explicit exclusion
        sizes.append(len(pool))
    assert all(140 < n < 164 for n in sizes)
    assert len(pool_members(card, shared_data, "fold0", "transductive")) == 164


def test_the_default_pool_is_honest_and_transductive_is_recorded(
    shared_data: Path, tmp_path: Path
) -> None:
    env = RunEnv(shared_data, None, torch.device("cpu"), tmp_path / "cache")
    spec = RunSpec(method="simclr", dataset="metaldam", split="fold0", profile="smoke")
    honest = prepare(spec, env)
    assert spec.pool == "honest" and honest.config["pool"] == "honest"
    assert honest.config["pretrain"]["pool"]["mode"] == "honest"
    assert honest.config["pretrain"]["pool"]["files"] < 164
    trans = prepare(RunSpec(**{**spec.__dict__, "pool": "transductive"}), env)
    assert trans.config["pretrain"]["pool"]["files"] == 164
    assert trans.hash != honest.hash
    assert trans.config["pretrain"] != honest.config["pretrain"]  # no shared pretraining
    other_draw = prepare(RunSpec(**{**spec.__dict__, "draw": 1}), env)
    assert other_draw.config["pretrain"] == honest.config["pretrain"]  # one pretraining a split
    store = ResultStore(f"sqlite:///{tmp_path / 'store.sqlite'}")
    run_id = store.start_run(_new_run(trans, env))
    (record,) = store.runs(id=run_id)
    assert record.pool == "transductive" and record.config["pool"] == "transductive"
    with pytest.raises(Exception, match="unknown pool mode 'open'"):
        prepare(RunSpec(**{**spec.__dict__, "pool": "open"}), env)
