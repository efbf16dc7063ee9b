"""bench.data.fetch: tiny fake upstream releases, served locally, become the canonical layout.

The real cards are used with their real URLs (rebased onto the local server); only the checksums
and the manifest are replaced by ones that match the fake files.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import re
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from bench.core.errors import BenchError
from bench.data.cards import DatasetCard, load_card, parse_card
from bench.data.check import check_dataset
from bench.data.fetch import fetch_dataset
from bench.data.sources import source_for
from tests.helpers.http import FileServer, unused_url

RNG = np.random.default_rng(0)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    with FileServer(tmp_path / "served") as server:
        yield server


def _image_bytes(pixels: np.ndarray, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _served_path(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- MetalDAM -------------------------------------------------------------------------------------

N_LABELED, N_UNLABELED = 7, 2  # 6 train images per fold: more than the 5 held out
W, H, BAND = 16, 20, 3


def _metaldam_sql(path: Path) -> bytes:
    with sqlite3.connect(path) as db:
        db.execute(
            'CREATE TABLE "micrograph" (micrograph_id INTEGER PRIMARY KEY NOT NULL, image_path '
            "VARCHAR, annotation_path VARCHAR, micron_bar FLOAT, height INTEGER, cropbar INTEGER)"
        )
        db.execute(
            'CREATE TABLE "folds" (fold_id integer PRIMARY KEY NOT NULL, train_partition TEXT, '
            "test_partition TEXT)"
        )
        for i in range(N_LABELED):
            db.execute(
                "INSERT INTO micrograph VALUES (?, ?, ?, ?, ?, ?)",
                (i, f"images/micrograph{i}.jpg", f"labels/micrograph{i}.png", 1.0, H - BAND, BAND),
            )
            train = (
                ",".join(str(j) for j in range(N_LABELED) if j != i) + " "
            )  # as upstream: a stray space
            db.execute("INSERT INTO folds VALUES (?, ?, ?)", (i, train, str(i)))
    db.close()
    return path.read_bytes()


def _fake_metaldam(server: FileServer, tmp_path: Path) -> tuple[DatasetCard, dict[str, bytes]]:
    """Serve a tiny MetalDAM release at the real card's URLs; returns the card and the prepared
    files that must come out byte-identical."""
    exact: dict[str, bytes] = {}
    labeled = io.BytesIO()
    with zipfile.ZipFile(labeled, "w") as zf:
        for i in range(N_LABELED):
            label = RNG.integers(0, 5, (H - BAND, W))
            files = {
                f"images/micrograph{i}.jpg": _image_bytes(RNG.integers(0, 255, (H, W, 3)), "JPEG"),
                f"labels/micrograph{i}.png": _image_bytes(
                    np.stack([label] * 3, -1) if i == 5 else label,
                    "PNG",  # RGB, like micrograph26
                ),
                f"coloured_labels/micrograph{i}.png": _image_bytes(
                    label[..., None] * [40, 20, 10], "PNG"
                ),
            }
            for rel, data in files.items():
                zf.writestr(f"MetalDAM/{rel}", data)
            exact |= files
        zf.writestr("__MACOSX/MetalDAM/images/._micrograph0.jpg", b"resource fork junk")
    unlabeled = io.BytesIO()
    converted = {}
    with zipfile.ZipFile(unlabeled, "w") as zf:
        for j in range(N_UNLABELED):
            gray = RNG.integers(0, 255, (H, W))
            rgb = np.stack([gray] * 3, -1)
            rgb[-2:, :4] = [255, 0, 0]  # a coloured scale bar in the band
            tif = _image_bytes(rgb, "TIFF", compression="tiff_lzw")
            zf.writestr(f"Additive_unlabeled_publish/micrograph{j}.tif", tif)
            luma = np.asarray(Image.open(io.BytesIO(tif)).convert("L"))
            converted[f"unlabeled/micrograph{j}.png"] = _image_bytes(luma, "PNG", optimize=True)
    exact["MetalDAM_metadata.sql"] = _metaldam_sql(tmp_path / "fake.sql")
    exact["SOURCE_README.md"] = "# MetalDAM (fake)\nRosalía\n".encode()
    payload = {
        "MetalDAM_labeled.zip": labeled.getvalue(),
        "Additive_unlabeled_publish.zip": unlabeled.getvalue(),
        "MetalDAM_metadata.sql": exact["MetalDAM_metadata.sql"],
        "README.md": exact["SOURCE_README.md"],
    }
    real = load_card("metaldam")
    fetch = copy.deepcopy(real.fetch)
    for entry in fetch["files"]:
        server.add(_served_path(entry["url"]), payload[entry["name"]])
        if "sha256" in entry:
            entry["sha256"] = _sha256(payload[entry["name"]])
    cards = tmp_path / "cards"
    cards.mkdir()
    listed = {**exact, **converted}  # the project's list names the converted PNGs
    (cards / fetch["checksums"]).write_text(
        "".join(f"{_sha256(data)}  {rel}\n" for rel, data in sorted(listed.items()))
    )
    return dataclasses.replace(real, path=cards / "metaldam.toml", fetch=fetch), exact


def _fetch_with_extra_member(server: FileServer, tmp_path: Path, name: str, data: bytes) -> str:
    """Fetch the fake release with one more member in the labeled zip; the error message."""
    tmp_path.mkdir()
    card, _ = _fake_metaldam(server, tmp_path)
    served = server.root / _served_path(card.fetch["files"][0]["url"])
    with zipfile.ZipFile(served, "a") as zf:
        zf.writestr(name, data)
    with pytest.raises(BenchError) as err:
        fetch_dataset(card, tmp_path / "data", base_url=server.url, show_progress=False)
    assert not (tmp_path / "data" / "metaldam").exists()
    return str(err.value)


def test_fetch_refuses_unlisted_and_altered_release_members(
    file_server: FileServer, tmp_path: Path
) -> None:
    message = _fetch_with_extra_member(
        file_server, tmp_path / "a", "MetalDAM/images/evil.jpg", b"x"
    )
    assert "archive member images/evil.jpg is not listed in metaldam.sha256" in message
    message = _fetch_with_extra_member(file_server, tmp_path / "b", "MetalDAM/notes.txt", b"x")
    assert "archive member MetalDAM/notes.txt is not listed" in message


def test_fetch_fake_metaldam(file_server: FileServer, tmp_path: Path) -> None:
    card, exact = _fake_metaldam(file_server, tmp_path)
    data_root = tmp_path / "data"
    root = fetch_dataset(card, data_root, base_url=file_server.url, show_progress=False)
    assert root == data_root / "metaldam"
    assert check_dataset(card, data_root) == []
    for rel, data in exact.items():
        assert (root / rel).read_bytes() == data, rel
    assert (root / "splits" / "fold3_test.txt").read_text() == "micrograph3\n"
    assert (root / "splits" / "fold0_train.txt").read_text().split() == [
        f"micrograph{i}" for i in range(1, N_LABELED)
    ]
    csv_text = (root / "metadata.csv").read_bytes().decode()
    assert csv_text.startswith(
        "micrograph_id,image_path,annotation_path,micron_bar,height,cropbar\r\n"
    )
    assert "5,images/micrograph5.jpg,labels/micrograph5.png,1.0,17,3\r\n" in csv_text
    with zipfile.ZipFile(file_server.root / _served_path(card.fetch["files"][1]["url"])) as zf:
        tif = Image.open(io.BytesIO(zf.read("Additive_unlabeled_publish/micrograph1.tif")))
        rgb = np.asarray(tif)
    gray = Image.open(root / "unlabeled" / "micrograph1.png")
    assert gray.mode == "L" and gray.size == (W, H)
    assert np.array_equal(np.asarray(gray)[:-2], rgb[:-2, :, 0])  # gray area: pixel-identical
    assert np.asarray(gray)[-1, 0] == 76  # pure red through ITU-R 601 luma: 0.299 * 255
    assert sorted(p.name for p in (data_root / ".downloads" / "metaldam").iterdir()) == sorted(
        [
            "MetalDAM_labeled.zip",
            "Additive_unlabeled_publish.zip",
            "MetalDAM_metadata.sql",
            "README.md",
        ]
    )
    served = len(file_server.requests)
    fetch_dataset(card, data_root, base_url=file_server.url, show_progress=False)
    assert len(file_server.requests) == served  # everything cached


def test_fetch_metaldam_with_a_changed_file_fails_the_check(
    file_server: FileServer, tmp_path: Path
) -> None:
    card, exact = _fake_metaldam(file_server, tmp_path)
    sums = card.path.parent / card.fetch["checksums"]
    sums.write_text(sums.read_text().replace(_sha256(exact["labels/micrograph2.png"]), "0" * 64))
    with pytest.raises(BenchError) as err:
        fetch_dataset(card, tmp_path / "data", base_url=file_server.url, show_progress=False)
    assert "archive member labels/micrograph2.png has sha256" in str(err.value)
    assert "metaldam.sha256 lists 0000" in str(err.value)
    # nothing left behind but the verified download cache: no dataset folder, no staging
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads"]
    assert load_card("metaldam") and source_for(card, tmp_path / "data").presence() == "no"


def test_an_offline_fetch_leaves_nothing_behind(tmp_path: Path) -> None:
    card, _ = _fake_metaldam(FileServer(tmp_path / "served"), tmp_path)
    with pytest.raises(BenchError):
        fetch_dataset(card, tmp_path / "data", base_url=unused_url(), show_progress=False)
    assert [p.name for p in (tmp_path / "data").iterdir()] == []


def test_card_paths_cannot_leave_the_data_root(tmp_path: Path) -> None:
    ebc = load_card("ebc1")
    for change, what in (
        ({"root": "../outside"}, "root"),
        ({"root": "/abs"}, "root"),
        ({"fetch": {**ebc.fetch, "cache": "../../x"}}, "[fetch] cache"),
        ({"fetch": {**ebc.fetch, "cache": "/tmp/x"}}, "[fetch] cache"),
        (
            {"fetch": {"recipe": "files", "files": [{"url": "http://h/a", "name": "../../x"}]}},
            "[fetch] download name",
        ),
        (
            {"fetch": {"recipe": "files", "files": [{"url": "http://h/..%2F..%2Fx"}]}},
            "[fetch] download name",
        ),
    ):
        with pytest.raises(BenchError, match=re.escape(what)):
            fetch_dataset(dataclasses.replace(ebc, **change), tmp_path / "data")
    assert not (tmp_path / "outside").exists() and not (tmp_path / "x").exists()


# -- NASA EBC -------------------------------------------------------------------------------------

A, B, C, D, MISSING = "010417#4_S2480009", "040617#2_S127(2)0015", "c_0001", "d_0002", "120718#4-B1"
EBC_SPLITS = {
    "EBC1": {"train": [A, B, MISSING], "val": [C], "test": [D]},
    "EBC2": {"train": [A], "val": [C], "test": [D]},
    "EBC3": {"train": [A, B, MISSING], "val": [D], "test": [C]},
}


def _blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _fake_ebc(
    server: FileServer, tmp_path: Path
) -> tuple[dict[str, DatasetCard], dict[str, np.ndarray]]:
    """Serve a tiny NASA EBC tree at the real cards' URLs; returns cards ebc1..3 and the expected
    pixels of every prepared ``images/<stem>`` and ``masks/<stem>``."""
    real = {n: load_card(n) for n in ("ebc1", "ebc2", "ebc3")}
    spec = real["ebc1"].fetch
    expected: dict[str, np.ndarray] = {}
    blobs: dict[str, bytes] = {}
    for stem in (A, B, C, D, MISSING):
        gray = RNG.integers(0, 255, (16, 16)).astype(np.uint8)
        mask = RNG.integers(0, 3, (16, 16)).astype(np.uint8)
        expected[f"images/{stem}"], expected[f"masks/{stem}"] = gray, mask
        blobs[f"images/{stem}"] = _image_bytes(np.stack([gray] * 3, -1), "TIFF")
        blobs[f"masks/{stem}"] = _image_bytes(mask, "TIFF")
    lines = []
    for variant, splits in EBC_SPLITS.items():
        for split, stems in splits.items():
            for stem in stems:
                for kind, folder in (("images", split), ("masks", f"{split}_annot")):
                    path = f"benchmark_segmentation_data/{variant}/{folder}/{stem}.tif"
                    data = blobs[f"{kind}/{stem}"]
                    if kind == "images" and stem == MISSING:
                        lines.append(f"{'8' * 40} BAD {path}")
                        continue
                    lines.append(f"{_blob_sha1(data)} {len(data)} {path}")
                    server.add(f"{_served_path(spec['base'])}/{spec['commit']}/{path}", data)
    rgba = np.concatenate(
        [np.stack([expected[f"images/{MISSING}"]] * 3, -1), np.full((16, 16, 1), 255)], -1
    )
    server.add(f"{_served_path(spec['missing']['base'])}/{MISSING}.png", _image_bytes(rgba, "PNG"))
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / spec["manifest"]).write_text("\n".join(lines) + "\n")
    fetch = copy.deepcopy(spec)
    fetch["missing"]["pixels_sha256"] = {
        MISSING: hashlib.sha256(expected[f"images/{MISSING}"].tobytes()).hexdigest()
    }
    fake = {
        n: dataclasses.replace(c, path=cards / f"{n}.toml", fetch=fetch) for n, c in real.items()
    }
    return fake, expected


def test_fetch_fake_ebc_deduplicates_and_shares_the_download(
    file_server: FileServer, tmp_path: Path
) -> None:
    cards, expected = _fake_ebc(file_server, tmp_path)
    data_root = tmp_path / "data"
    root = fetch_dataset(cards["ebc1"], data_root, base_url=file_server.url, show_progress=False)
    assert root == data_root / "nasa_micronet" / "EBC"
    for name, card in cards.items():
        assert check_dataset(card, data_root) == [], name
    for rel, pixels in expected.items():
        prepared = Image.open(root / f"{rel}.png")
        assert prepared.mode == "L" and np.array_equal(np.asarray(prepared), pixels), rel
    for variant, splits in EBC_SPLITS.items():
        for split, stems in splits.items():
            assert (root / "splits" / f"{variant}_{split}.txt").read_text() == "".join(
                f"{s}\n" for s in sorted(stems)
            )
    manifest = cards["ebc1"].path.parent / cards["ebc1"].fetch["manifest"]
    assert (root / "UPSTREAM_FILES.txt").read_bytes() == manifest.read_bytes()
    requested = [path for path, _ in file_server.requests]
    assert len(requested) == len(set(requested)) == 4 + 5 + 1  # unique images, masks, replacement

    fetch_dataset(cards["ebc2"], data_root, base_url=file_server.url, show_progress=False)
    assert len(file_server.requests) == 10  # same root, same cache: nothing downloaded again
    for sub in ("images", "masks"):
        for path in (root / sub).iterdir():
            path.unlink()
    fetch_dataset(cards["ebc3"], data_root, base_url=file_server.url, show_progress=False)
    assert len(file_server.requests) == 10  # prepared files gone: rebuilt from the shared cache
    assert check_dataset(cards["ebc3"], data_root) == []


def test_fetch_ebc_verifies_blob_sha1_and_replacement_pixels(
    file_server: FileServer, tmp_path: Path
) -> None:
    cards, _ = _fake_ebc(file_server, tmp_path)
    manifest = cards["ebc1"].path.parent / cards["ebc1"].fetch["manifest"]
    original = manifest.read_text()
    first = original.splitlines()[0]
    manifest.write_text(original.replace(first.split()[0], "0" * 40))
    with pytest.raises(BenchError) as err:
        fetch_dataset(
            cards["ebc1"], tmp_path / "data", base_url=file_server.url, show_progress=False
        )
    assert "git blob sha1: expected " + "0" * 40 in str(err.value)
    assert f"{file_server.url}/nasa/pretrained-microscopy-models/" in str(err.value)

    manifest.write_text(original)
    card = cards["ebc1"]
    bad = copy.deepcopy(card.fetch)
    bad["missing"]["pixels_sha256"][MISSING] = "f" * 64
    with pytest.raises(BenchError, match=r"pixels_sha256: expected f{64}"):
        fetch_dataset(
            dataclasses.replace(card, fetch=bad),
            tmp_path / "data",
            base_url=file_server.url,
            show_progress=False,
        )


# -- errors and the generic recipe ----------------------------------------------------------------


def test_cards_that_cannot_be_fetched(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="procedural"):
        fetch_dataset(load_card("synthetic"), tmp_path)
    ebc = load_card("ebc1")
    with pytest.raises(BenchError, match=r"no \[fetch\] table"):
        fetch_dataset(dataclasses.replace(ebc, fetch={}), tmp_path)
    with pytest.raises(
        BenchError, match="recipe = 'zenodo' is unknown; known: files, metaldam, nasa-ebc"
    ):
        fetch_dataset(dataclasses.replace(ebc, fetch={"recipe": "zenodo"}), tmp_path)
    assert not (tmp_path / "nasa_micronet").exists()


def test_generic_files_recipe(file_server: FileServer, tmp_path: Path) -> None:
    image = _image_bytes(RNG.integers(0, 255, (8, 8)), "PNG")
    mask = _image_bytes(RNG.integers(0, 2, (8, 8)), "PNG")
    files = {
        **{f"images/x#{i}.png": image for i in (1, 2, 3)},
        **{f"masks/x#{i}.png": mask for i in (1, 2, 3)},
        "train.txt": b"x#1\nx#2\n",
        "test.txt": b"x#3\n",
    }
    entries = ",\n".join(
        f'{{ url = "https://example.org/d/{i}", name = "f{i}", dest = "{rel}", '
        f'sha256 = "{_sha256(data)}" }}'
        for i, (rel, data) in enumerate(files.items())
    )
    for i, data in enumerate(files.values()):
        file_server.add(f"d/{i}", data)
    card_path = tmp_path / "mini.toml"
    card_path.write_text(
        'name = "mini"\n'
        '[classes]\nids = [0, 1]\nnames = ["a", "b"]\ncolors = [[0, 0, 0], [9, 9, 9]]\n'
        '[layout]\nimages = "images/{stem}.png"\nmasks = "masks/{stem}.png"\n'
        '[splits.s]\ntrain = "train.txt"\ntest = "test.txt"\nval_holdout = 1\n'
        f'[fetch]\nrecipe = "files"\nfiles = [\n{entries}\n]\n'
    )
    card = parse_card(card_path)
    root = fetch_dataset(card, tmp_path / "data", base_url=file_server.url, show_progress=False)
    assert {rel: (root / rel).read_bytes() for rel in files} == files
    assert check_dataset(card, tmp_path / "data") == []
