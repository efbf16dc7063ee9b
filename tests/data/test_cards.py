"""Dataset cards: every card loads, the real-data cards match the files, bad cards fail clearly."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.core.errors import BenchError
from bench.data.cards import CARDS_DIR, available_cards, load_card, parse_card
from bench.data.images import read_mask
from bench.data.pool import pool_files
from bench.data.sources import dataset_dir, load_labeled, read_list

REAL_CARDS = ("metaldam", "ebc1", "ebc2", "ebc3")
SPOT_CHECKED = {  # loaded fully (decoded, cropped, merged); the rest are checked from headers
    "metaldam": ["micrograph0", "micrograph26", "micrograph41"],
    "ebc1": ["040617#2_S127(2)0015"],
    "ebc3": ["120718#4-B1_50cyc_14260025"],
}


def test_every_card_and_every_variant_loads() -> None:
    names = available_cards()
    assert set(names) >= {"metaldam", "ebc1", "ebc2", "ebc3", "synthetic"}
    for name in names:
        card = load_card(name)
        assert card.name == name, f"{name}.toml names itself {card.name!r}"
        assert card.path == CARDS_DIR / f"{name}.toml"
        assert card.class_ids == tuple(range(card.num_classes))
        assert card.default_protocol == "honest" or card.default_protocol in card.protocols
        for variant in card.raw.get("variants", {}):
            v = load_card(f"{name}:{variant}")
            assert v.full_name == f"{name}:{variant}"
            assert v.class_ids == tuple(range(v.num_classes))


def test_class_tables_match_the_data_readme() -> None:
    metaldam = load_card("metaldam")
    assert metaldam.class_names == (
        "Matrix", "Austenite", "Martensite/Austenite", "Precipitate", "Defect",
    )  # fmt: skip
    assert metaldam.classes[0].color == (128, 0, 255)
    assert metaldam.layout is not None and metaldam.layout.crop_image_to_mask
    for name in ("ebc1", "ebc2", "ebc3"):
        ebc = load_card(name)
        assert ebc.class_names == ("background", "oxide", "crack")
        assert ebc.background == 0
        assert ebc.root == "nasa_micronet/EBC"
        assert ebc.layout is not None and not ebc.layout.crop_image_to_mask


@pytest.mark.parametrize("name", REAL_CARDS)
def test_real_card_matches_the_files(name: str, shared_data: Path) -> None:
    card = load_card(name)
    folder = dataset_dir(card, shared_data)
    assert card.layout is not None
    checked = 0
    for split_name, spec in card.splits.items():
        lists = [spec.train, spec.test] + ([spec.val] if spec.val else [])
        for list_file in lists:
            stems = read_list(folder / list_file)
            assert stems, f"{name}/{split_name}: {list_file} is empty"
            assert len(stems) == len(set(stems)), f"{list_file} lists a stem twice"
            for stem in stems:
                image_path = folder / card.layout.images.format(stem=stem)
                mask_path = folder / card.layout.masks.format(stem=stem)
                assert image_path.is_file(), f"{name}/{split_name}: no image for {stem}"
                assert mask_path.is_file(), f"{name}/{split_name}: no mask for {stem}"
                with Image.open(image_path) as img, Image.open(mask_path) as msk:
                    (iw, ih), (mw, mh) = img.size, msk.size
                if card.layout.crop_image_to_mask:
                    assert iw == mw and mh < ih, f"{stem}: image {iw}×{ih}, mask {mw}×{mh}"
                else:
                    assert (iw, ih) == (mw, mh), f"{stem}: image {iw}×{ih}, mask {mw}×{mh}"
                checked += 1
    assert checked > 0


@functools.cache
def _mask_ids(path: Path, channel: int) -> frozenset[int]:
    """The values in a mask file (channel ``channel`` of a multi-channel mask); cached because the
    three EBC cards share their files."""
    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., channel]
    return frozenset(np.flatnonzero(np.bincount(arr.ravel())).tolist())


@pytest.mark.parametrize("name", REAL_CARDS)
def test_real_mask_values_are_card_class_ids(name: str, shared_data: Path) -> None:
    """Every mask of every split holds only ids the card knows (masks are small PNGs: fast)."""
    card = load_card(name)
    folder = dataset_dir(card, shared_data)
    stems = {
        s
        for spec in card.splits.values()
        for f in (spec.train, spec.test, spec.val)
        if f
        for s in read_list(folder / f)
    }
    seen: set[int] = set()
    for stem in sorted(stems):
        ids = _mask_ids(folder / card.layout.masks.format(stem=stem), card.layout.mask_channel)
        assert ids <= set(card.class_ids), f"{stem}: mask values {sorted(ids)}"
        seen |= ids
    assert seen == set(card.class_ids), f"{name}: classes never seen in any mask"


@pytest.mark.parametrize("name", sorted(SPOT_CHECKED))
def test_spot_checked_pairs_load_fully(name: str, shared_data: Path) -> None:
    card = load_card(name)
    for item in load_labeled(card, shared_data, SPOT_CHECKED[name]):
        assert item.image.dtype == np.uint8 and item.image.ndim == 2
        assert item.image.shape == item.mask.shape
        assert item.image.std() > 5, f"{item.stem}: image looks blank"
        assert set(np.unique(item.mask)) <= set(card.class_ids)


def test_metaldam_folds_and_unlabeled_pool(shared_data: Path) -> None:
    card = load_card("metaldam")
    folder = dataset_dir(card, shared_data)
    assert sorted(card.splits) == [f"fold{k}" for k in range(6)]
    assert card.default_split == "fold0"
    tests = []
    for k in range(6):
        spec = card.splits[f"fold{k}"]
        train, test = read_list(folder / spec.train), read_list(folder / spec.test)
        assert (len(train), len(test)) == (35, 7)
        assert not set(train) & set(test)
        assert spec.val is None and spec.val_holdout == 5
        tests.append(set(test))
    union = set().union(*tests)
    assert len(union) == 42 == sum(len(t) for t in tests)  # disjoint and covering
    assert union == {f"micrograph{n}" for n in range(42)}
    files = pool_files(card, shared_data, mode="transductive")
    assert len(files) == 164
    assert {f.name for f in files} == {f"micrograph{n}.png" for n in range(164)}


def test_ebc_split_sizes(shared_data: Path) -> None:
    expected = {"ebc1": (18, 3, 3), "ebc2": (4, 3, 3), "ebc3": (15, 3, 6)}
    for name, sizes in expected.items():
        card = load_card(name)
        spec = card.split(None)
        folder = dataset_dir(card, shared_data)
        lists = [read_list(folder / f) for f in (spec.train, spec.val, spec.test)]
        assert tuple(map(len, lists)) == sizes, name
        train, val, test = map(set, lists)
        assert not (train & val or train & test or val & test), name
    ebc1, ebc2 = (load_card(n).split(None) for n in ("ebc1", "ebc2"))
    folder = dataset_dir(load_card("ebc1"), shared_data)
    assert set(read_list(folder / ebc2.train)) < set(read_list(folder / ebc1.train))
    ebc3 = load_card("ebc3").split(None)
    assert all(s.startswith("050317#3") for s in read_list(folder / ebc3.test))


def test_ebc_pretraining_pool_is_the_training_images_only(shared_data: Path) -> None:
    """EBC has no unlabeled set: the SSL pool is the split's training images, never val or test."""
    from bench.data.pool import load_pool

    for name, count in {"ebc1": 18, "ebc2": 4, "ebc3": 15}.items():
        card = load_card(name)
        spec = card.split(None)
        folder = dataset_dir(card, shared_data)
        files = pool_files(card, shared_data)
        assert {f.stem for f in files} == set(read_list(folder / spec.train)), name
        assert len(files) == count and all(f.is_file() for f in files)
        assert not {f.stem for f in files} & set(
            read_list(folder / spec.val) + read_list(folder / spec.test)
        )
    images = load_pool(load_card("ebc2"), shared_data)
    assert len(images) == 4 and all(im.dtype == np.uint8 and im.ndim == 2 for im in images)


def test_unlabeled_section_needs_one_source(tmp_path: Path) -> None:
    card = (CARDS_DIR / "ebc1.toml").read_text()
    bad = tmp_path / "ebc1.toml"
    bad.write_text(card.replace('from_split = "train"', 'from_split = "test"'))
    with pytest.raises(BenchError, match='only "train" is allowed'):
        parse_card(bad)
    bad.write_text(
        card.replace('from_split = "train"', 'from_split = "train"\nimages = "images/*.png"')
    )
    with pytest.raises(BenchError, match=r"ebc1\.toml: bad dataset card: .*exactly one of images"):
        parse_card(bad)


def test_ebc_binary_variant_merges_crack_into_oxide(shared_data: Path) -> None:
    full, binary = load_card("ebc1"), load_card("ebc1:binary")
    assert binary.num_classes == 2 and binary.class_names == ("background", "oxide+crack")
    assert binary.merge == ((2, 1),)
    assert binary.protocol("matssl-paper").merge == ()  # merged already, in the masks
    assert full.protocol("matssl-paper").merge == ((2, 1),)
    stem = read_list(dataset_dir(full, shared_data) / full.split(None).train)[0]
    path = dataset_dir(full, shared_data) / full.layout.masks.format(stem=stem)
    three = np.bincount(read_mask(path, full).ravel(), minlength=3)
    two = np.bincount(read_mask(path, binary).ravel(), minlength=2)
    assert three[2] > 0, "pick a mask with crack pixels"
    assert len(two) == 2
    assert two[0] == three[0]
    assert two[1] == three[1] + three[2]


def test_unknown_dataset_and_unknown_split_and_protocol() -> None:
    with pytest.raises(BenchError, match=r"unknown dataset 'nope'.*known: .*metaldam"):
        load_card("nope")
    card = load_card("metaldam")
    with pytest.raises(BenchError, match=r"metaldam.toml.*no split 'fold9'.*fold0"):
        card.split("fold9")
    with pytest.raises(BenchError, match=r"metaldam.toml.*no protocol 'x'.*matssl-paper"):
        card.protocol("x")


# --- bad cards -------------------------------------------------------------------------------

BASE = (CARDS_DIR / "ebc1.toml").read_text()


def _edit(old: str, new: str, count: int = 1) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, count)


BAD_CARDS = {
    "invalid_toml": (BASE + "\n[classes\n", None, r"not valid TOML"),
    "not_utf8": (None, None, r"not valid TOML"),
    "missing_name": (_edit('name = "ebc1"\n', ""), None, r"missing field 'name'"),
    "missing_classes": (
        _edit("[classes]\nids = [0, 1, 2]\n", "[klasses]\nids = [0, 1, 2]\n"),
        None,
        r"unknown table 'klasses'",
    ),
    "ids_not_0_to_n": (
        _edit("ids = [0, 1, 2]", "ids = [1, 2, 3]"),
        None,
        r"class ids must be 0\.\.2",
    ),
    "ids_out_of_order": (_edit("ids = [0, 1, 2]", "ids = [0, 2, 1]"), None, r"class ids must be"),
    "names_length": (
        _edit('names = ["background", "oxide", "crack"]', 'names = ["background", "oxide"]'),
        None,
        r"differ in length",
    ),
    "protocol_unknown_class": (
        _edit("classes = [0, 1]", "classes = [0, 5]"),
        None,
        r"protocol 'matssl-paper': class 5 is not one of the class ids",
    ),
    "protocol_unknown_metric": (_edit('metric = "dice"', 'metric = "f1"'), None, r"metric must be"),
    "protocol_bad_resize": (
        _edit("resize = [512, 512]", "resize = [512]"),
        None,
        r"resize must be \[height, width\]",
    ),
    "unknown_variant": (BASE, "ternary", r"no variant 'ternary' \(variants: binary\)"),
    "variant_merge_target": (
        _edit('[variants.binary]\nmerge = { "2" = 1 }', '[variants.binary]\nmerge = { "2" = 7 }'),
        "binary",
        r"merge target 7",
    ),
    "variant_unmapped": (
        _edit('[variants.binary]\nmerge = { "2" = 1 }', "[variants.binary]"),
        "binary",
        r"class id\(s\) \[2\] of the card are neither merged",
    ),
    "unknown_table": (
        _edit("[unlabeled]\n", "[unlabelled]\n"),
        None,
        r"unknown table 'unlabelled' \(allowed: .*unlabeled",
    ),
    "unknown_key": (
        _edit('from_split = "train"', 'from_split = "train"\ncrop_botom = 3'),
        None,
        r"unknown key 'unlabeled\.crop_botom' \(allowed in unlabeled: ",
    ),
    "unknown_protocol_key": (
        _edit('metric = "dice"', 'metric = "dice"\nmetrics = "iou"'),
        None,
        r"unknown key 'protocols\.pscl-paper\.metrics'",
    ),
    "name_not_stem": (
        _edit('name = "ebc1"', 'name = "ebc9"'),
        None,
        r"name = 'ebc9' must equal the file name's stem 'ebc1'",
    ),
    "holdout_not_int": (
        _edit('val = "splits/EBC1_val.txt"', 'val_holdout = "five"'),
        None,
        r"splits\.nasa\.val_holdout must be an integer, got 'five'",
    ),
    "crop_not_int": (
        _edit('from_split = "train"', 'images = "x/*.png"\ncrop_bottom = "66"'),
        None,
        r"unlabeled\.crop_bottom must be an integer, got '66'",
    ),
    "color_not_int": (
        _edit("[0, 170, 255]", '[0, "a", 255]'),
        None,
        r"classes\.colors\[1\] must be an integer, got 'a'",
    ),
    "missing_train": (
        _edit('train = "splits/EBC1_train.txt"\n', ""),
        None,
        r"missing field 'splits\.nasa\.train'",
    ),
    "absolute_glob": (
        _edit('from_split = "train"', 'images = "/etc/*.png"'),
        None,
        r"unlabeled\.images = '/etc/\*\.png' must be a relative path inside the dataset folder",
    ),
    "root_escapes": (
        _edit('root = "nasa_micronet/EBC"', 'root = "../outside"'),
        None,
        r"root = '\.\./outside' must not contain '\.\.'",
    ),
    "split_list_escapes": (
        _edit('test = "splits/EBC1_test.txt"', 'test = "../../etc/passwd"'),
        None,
        r"splits\.nasa\.test = .* must not contain '\.\.'",
    ),
    "split_not_a_table": (
        _edit("[splits]\n", '[splits]\nextra = "x"\n'),
        None,
        r"bad dataset card",
    ),
    "split_both_val_kinds": (
        _edit('val = "splits/EBC1_val.txt"', 'val = "splits/EBC1_val.txt"\nval_holdout = 2'),
        None,
        r"split 'nasa' needs exactly one of",
    ),
    "layout_without_stem": (
        _edit('images = "images/{stem}.png"', 'images = "images/x.png"'),
        None,
        r"layout.images must contain '\{stem\}'",
    ),
    "default_split_unknown": (
        _edit('default = "nasa"', 'default = "fold0"'),
        None,
        r"splits.default = 'fold0' is not a defined split",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CARDS))
def test_bad_card_is_a_bench_error_naming_the_file(case: str, tmp_path: Path) -> None:
    text, variant, message = BAD_CARDS[case]
    path = tmp_path / case / "ebc1.toml"
    path.parent.mkdir()
    if text is None:
        path.write_bytes(b"\xff\xfe\x00 not text \x89PNG")
    else:
        path.write_text(text)
    with pytest.raises(BenchError, match=message) as info:
        parse_card(path, variant)
    assert str(path) in str(info.value)


def test_bad_card_through_load_card_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text(
        _edit("ids = [0, 1, 2]", "ids = [0, 1, 3]").replace('name = "ebc1"', 'name = "broken"')
    )
    with pytest.raises(BenchError, match=r"broken\.toml: bad dataset card: class ids"):
        load_card("broken", cards_dir=tmp_path)
    with pytest.raises(BenchError, match=r"broken\.toml.*no variant 'x'"):
        load_card("broken:x", cards_dir=tmp_path)
    assert available_cards(tmp_path) == ["broken"]


def test_unedited_base_card_parses_from_a_copy(tmp_path: Path) -> None:
    """The bad-card cases above differ from a good card only by their edit."""
    path = tmp_path / "ebc1.toml"
    path.write_text(BASE)
    card = parse_card(path)
    assert card.num_classes == 3 and card.path == path
    assert parse_card(path, "binary").num_classes == 2
