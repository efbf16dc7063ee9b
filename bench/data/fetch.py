"""``python -m bench data fetch NAME``: download a dataset's upstream files and prepare its layout.

A card's ``[fetch]`` table names a recipe:

- ``files``: each entry of ``files = [{url, name?, sha256?, dest?}]`` is downloaded into the cache
  ``<data_root>/.downloads/<cache or card name>/<name>`` (name defaults to the URL's last part),
  checked against ``sha256`` when given, and copied to ``<root>/<dest>`` when ``dest`` is given.
  Every recipe starts with this step, so a card-only dataset needs nothing else.
- ``metaldam``: additionally unpacks the release zips among ``files`` (tolerating a top-level
  folder), copies ``images/``, ``labels/`` and ``coloured_labels/`` verbatim, converts the unlabeled
  RGB TIFFs to 8-bit gray PNG (ITU-R 601 luma), and writes ``metadata.csv`` and
  ``splits/fold{k}_{train,test}.txt`` from the SQLite file (the ``.sql`` entry of ``files``).
- ``nasa-ebc``: downloads ``<base>/<commit>/<path>`` for every line (git blob SHA-1, size, path) of
  the ``manifest`` file, verified by size and blob SHA-1, once per distinct file; writes
  ``images/<stem>.png`` (one channel of the gray RGB TIFF), ``masks/<stem>.png`` and
  ``splits/<variant>_<split>.txt`` from the upstream folders. Entries marked ``BAD`` (content
  missing upstream) come from ``[fetch.missing]``: ``<base>/<stem>.png``, checked by
  ``pixels_sha256``.

``checksums`` names a ``sha256sum``-style file of prepared files (paths relative to the dataset
root), which ``bench.data.check`` verifies; it and ``manifest`` lie next to the card. ``cache``
names the download cache folder (default: the card name). Converted images already present are kept,
so a second fetch (``ebc2`` after ``ebc1``: same root, same cache) downloads nothing. The result
must pass ``check_dataset``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.core.errors import BenchError
from bench.data.cards import DatasetCard
from bench.data.check import check_dataset, read_checksums
from bench.data.download import download, rebase_url, safe_extract, sha256_file

DOWNLOADS = ".downloads"
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class _Job:
    """One fetch: the card, where its files go, and how downloads are made."""

    card: DatasetCard
    root: Path
    cache: Path
    base_url: str | None
    show_progress: bool

    def spec(self, key: str) -> Any:
        try:
            return self.card.fetch[key]
        except KeyError:
            raise BenchError(f"{self.card.path}: [fetch] needs a '{key}' entry") from None

    def card_file(self, key: str) -> Path:
        path = self.card.path.parent / self.spec(key)
        if not path.is_file():
            raise BenchError(f"{path}: file named by [fetch] {key} in {self.card.path} is missing")
        return path

    def get(self, url: str, name: str, **expected: Any) -> Path:
        return download(
            rebase_url(url, self.base_url),
            confined(self.cache, name, f"{self.card.path}: [fetch] download name"),
            show_progress=self.show_progress,
            **expected,
        )


def fetch_dataset(
    card: DatasetCard, data_root: Path, *, base_url: str | None = None, show_progress: bool = True
) -> Path:
    """Download, verify and prepare ``card``'s dataset under ``data_root/card.root``; returns it.

    ``base_url`` replaces the scheme and host of every URL (a mirror, or a test server).
    """
    recipe = _recipe(card)
    data_root = Path(data_root)
    final = confined(data_root, card.root, f"{card.path}: root")
    cache = confined(
        data_root / DOWNLOADS,
        str(card.fetch.get("cache", card.name)),
        f"{card.path}: [fetch] cache",
    )
    staging_base = data_root / STAGING
    staging_base.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=staging_base, prefix=f"{card.name}-"))
    made_cache = not cache.exists()
    try:
        job = _Job(card, stage / card.root, cache, base_url, show_progress)
        if final.is_dir():  # files already there (another card of one root) are kept
            shutil.copytree(final, job.root, copy_function=_link_or_copy)
        job.root.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        recipe(job, _fetch_files(job))
        problems = check_dataset(card, stage)
        if problems:
            shown = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
            more = len(problems) - MAX_LISTED_PROBLEMS
            raise BenchError(
                f"{final}: fetched '{card.name}' but the result fails its check "
                f"({len(problems)} problem(s); nothing was put in place):\n  {shown}"
                + (f"\n  ... and {more} more" if more > 0 else "")
            )
        _move_into_place(job.root, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_if_empty(staging_base)
        if made_cache:
            _remove_if_empty(cache)
            _remove_if_empty(cache.parent)
    return final


STAGING = ".staging"


def confined(base: Path, rel: str, what: str) -> Path:
    """``base/rel`` when it stays inside ``base`` (resolved), else a BenchError naming ``what``."""
    if not rel or Path(rel).is_absolute() or PurePosixPath(rel).is_absolute():
        raise BenchError(f"{what} = {rel!r} must be a relative path inside {base}")
    path = (base / rel).resolve()
    if base.resolve() not in path.parents:
        raise BenchError(f"{what} = {rel!r} leads outside {base}")
    return base / rel


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _move_into_place(staged: Path, final: Path) -> None:
    """Replace ``final`` by ``staged`` (renames within the data root)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(final.name + ".replaced")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):
        folder.rmdir()


def _recipe(card: DatasetCard) -> Callable[[_Job, dict[str, Path]], None]:
    if card.generator:
        raise BenchError(
            f"{card.path}: '{card.name}' is generated on the fly (procedural): nothing to fetch"
        )
    if not card.fetch:
        raise BenchError(
            f"{card.path}: dataset '{card.name}' has no [fetch] table, so it cannot be fetched; "
            f"put its files under <data root>/{card.root} as its [layout] and [splits] describe"
        )
    name = card.fetch.get("recipe")
    if name not in RECIPES:
        raise BenchError(
            f"{card.path}: [fetch] recipe = {name!r} is unknown; known: {', '.join(RECIPES)}"
        )
    return RECIPES[name]


# -- step shared by all recipes: the card's `files` list ------------------------------------------


def _fetch_files(job: _Job) -> dict[str, Path]:
    """Download each ``files`` entry into the cache, copy those with ``dest``; {name: cached}."""
    cached = {}
    for entry in job.card.fetch.get("files", []):
        if "url" not in entry:
            raise BenchError(f"{job.card.path}: a [fetch] files entry has no 'url': {entry}")
        url = entry["url"]
        name = entry.get("name") or unquote(PurePosixPath(urlsplit(url).path).name)
        cached[name] = job.get(url, name, sha256=entry.get("sha256"))
        if "dest" in entry:
            with _atomic(_inside_root(job, entry["dest"])) as tmp:
                shutil.copyfile(cached[name], tmp)
    return cached


def _recipe_files(job: _Job, files: dict[str, Path]) -> None:
    """Nothing beyond the shared ``files`` step."""


def _inside_root(job: _Job, rel: str) -> Path:
    path = (job.root / rel).resolve()
    if job.root.resolve() not in path.parents:
        raise BenchError(f"{job.card.path}: [fetch] dest {rel!r} is outside the dataset folder")
    return path


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    with _atomic(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", optimize=True)


def _write_text(path: Path, text: str) -> None:
    with _atomic(path) as tmp:
        tmp.write_bytes(text.encode())


# -- MetalDAM -------------------------------------------------------------------------------------

METALDAM_FOLDERS = {"images": ".jpg", "labels": ".png", "coloured_labels": ".png"}


def _recipe_metaldam(job: _Job, files: dict[str, Path]) -> None:
    with tempfile.TemporaryDirectory(dir=job.cache, prefix="unpacked-") as tmp:
        tree = Path(tmp)
        for name, path in files.items():
            if name.lower().endswith(".zip"):
                safe_extract(path, tree / Path(name).stem)
        unpacked = [p for p in tree.rglob("*") if p.is_file() and not _is_junk(p)]
        _verify_members(job, unpacked)
        for folder, suffix in METALDAM_FOLDERS.items():
            _copy_folder(job, unpacked, folder, suffix)
        _convert_unlabeled(job, unpacked)
    _write_metaldam_tables(job, _one_with_suffix(job, files, ".sql"))


def _verify_members(job: _Job, unpacked: list[Path]) -> None:
    """The release zips have no checksum of their own: every member (``__MACOSX`` junk aside,
    which is never used) must be a file the card's checksums list, with that SHA-256, or an
    unlabeled TIFF whose converted PNG they list (checked after conversion)."""
    sums_path = job.card_file("checksums")
    sums = read_checksums(sums_path)
    for path in unpacked:
        rel = "/".join(path.parts[-2:])
        if rel in sums:
            if (got := sha256_file(path)) != sums[rel]:
                raise BenchError(
                    f"{job.cache}: archive member {rel} has sha256 {got}, but {sums_path.name} "
                    f"lists {sums[rel]}; refusing it (a changed or crafted release?)"
                )
        elif not (
            path.suffix.lower() in (".tif", ".tiff") and f"unlabeled/{path.stem}.png" in sums
        ):
            raise BenchError(
                f"{job.cache}: archive member {rel} is not listed in {sums_path.name}; "
                "refusing it (a changed or crafted release?)"
            )


def _is_junk(path: Path) -> bool:
    return "__MACOSX" in path.parts or path.name.startswith("._")


def _copy_folder(job: _Job, unpacked: list[Path], folder: str, suffix: str) -> None:
    found = [p for p in unpacked if p.parent.name.lower() == folder and p.suffix.lower() == suffix]
    if not found:
        raise BenchError(
            f"{job.cache}: no {folder}/*{suffix} in the downloaded archives; a changed release? "
            f"delete {job.cache} and fetch again"
        )
    for src in found:
        with _atomic(job.root / folder / src.name) as tmp:
            shutil.copyfile(src, tmp)


def _convert_unlabeled(job: _Job, unpacked: list[Path]) -> None:
    """RGB TIFF -> 8-bit gray PNG (PIL's ITU-R 601-2 luma), once per image."""
    tiffs = [p for p in unpacked if p.suffix.lower() in (".tif", ".tiff")]
    if not tiffs and job.card.unlabeled is not None:
        raise BenchError(f"{job.cache}: no unlabeled .tif images in the downloaded archives")
    for src in tiffs:
        out = job.root / "unlabeled" / f"{src.stem}.png"
        if not out.exists():
            with Image.open(src) as im:
                _save_png(np.asarray(im.convert("L")), out)


def _one_with_suffix(job: _Job, files: dict[str, Path], suffix: str) -> Path:
    found = [p for name, p in files.items() if name.lower().endswith(suffix)]
    if len(found) != 1:
        raise BenchError(f"{job.card.path}: [fetch] files needs exactly one {suffix} entry")
    return found[0]


def _write_metaldam_tables(job: _Job, sql: Path) -> None:
    """``metadata.csv`` (the ``micrograph`` table) and the fold lists (the ``folds`` table)."""
    try:
        with closing(sqlite3.connect(f"{sql.resolve().as_uri()}?mode=ro", uri=True)) as db:
            cur = db.execute("SELECT * FROM micrograph ORDER BY micrograph_id")
            header = [d[0] for d in cur.description]
            rows = cur.fetchall()
            folds = db.execute(
                "SELECT fold_id, train_partition, test_partition FROM folds ORDER BY fold_id"
            ).fetchall()
    except sqlite3.Error as exc:
        raise BenchError(f"{sql}: not the expected SQLite metadata ({exc})") from None
    table = io.StringIO()
    csv.writer(table).writerows([header, *rows])
    _write_text(job.root / "metadata.csv", table.getvalue())
    for fold_id, train, test in folds:
        for part, ids in (("train", train), ("test", test)):
            names = "".join(f"micrograph{int(i)}\n" for i in ids.split(","))
            _write_text(job.root / "splits" / f"fold{fold_id}_{part}.txt", names)


# -- NASA EBC -------------------------------------------------------------------------------------

EBC_PATH = re.compile(
    r"^benchmark_segmentation_data/(?P<variant>[^/]+)/(?P<split>train|val|test)(?P<annot>_annot)?"
    r"/(?P<stem>[^/]+)\.tif$"
)


@dataclass(frozen=True)
class _UpstreamFile:
    blob_sha1: str
    size: int | None  # None: marked BAD, content missing upstream
    path: str


def _recipe_nasa_ebc(job: _Job, files: dict[str, Path]) -> None:
    manifest = job.card_file("manifest")
    unique: dict[tuple[str, str], _UpstreamFile] = {}
    splits: dict[str, set[str]] = {}
    for entry in _read_manifest(manifest):
        match = EBC_PATH.match(entry.path)
        if match is None:
            raise BenchError(f"{manifest}: unexpected upstream path {entry.path!r}")
        kind = "masks" if match["annot"] else "images"
        first = unique.setdefault((kind, match["stem"]), entry)
        if first.blob_sha1 != entry.blob_sha1:
            raise BenchError(
                f"{manifest}: {first.path} and {entry.path} differ; cannot deduplicate"
            )
        if kind == "images":
            splits.setdefault(f"{match['variant']}_{match['split']}", set()).add(match["stem"])
    for (kind, stem), entry in unique.items():
        out = job.root / kind / f"{stem}.png"
        if not out.exists():
            _save_png(_upstream_pixels(job, entry, stem), out)
    for name, stems in splits.items():
        _write_text(job.root / "splits" / f"{name}.txt", "".join(f"{s}\n" for s in sorted(stems)))
    with _atomic(job.root / "UPSTREAM_FILES.txt") as tmp:
        shutil.copyfile(manifest, tmp)


def _read_manifest(path: Path) -> list[_UpstreamFile]:
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=2)
        if len(parts) != 3 or not (parts[1].isdigit() or parts[1] == "BAD"):
            raise BenchError(
                f"{path}:{n}: expected '<git blob sha1> <size|BAD> <path>', got {line!r}"
            )
        sha1, size, rel = parts
        entries.append(_UpstreamFile(sha1, int(size) if size.isdigit() else None, rel))
    return entries


def _upstream_pixels(job: _Job, entry: _UpstreamFile, stem: str) -> np.ndarray:
    if entry.size is None:
        return _missing_pixels(job, entry, stem)
    url = f"{job.spec('base')}/{job.spec('commit')}/{quote(entry.path)}"
    path = job.get(url, entry.path, git_blob_sha1=entry.blob_sha1, size=entry.size)
    return _gray_pixels(path)


def _missing_pixels(job: _Job, entry: _UpstreamFile, stem: str) -> np.ndarray:
    """A file marked BAD upstream, from ``[fetch.missing]``, checked by its decoded pixels."""
    missing = job.card.fetch.get("missing", {})
    want = missing.get("pixels_sha256", {}).get(stem)
    if want is None or "base" not in missing:
        raise BenchError(
            f"{job.card.path}: {entry.path} has no content upstream and [fetch.missing] gives "
            f"no replacement (base and pixels_sha256 for '{stem}')"
        )
    url = f"{missing['base']}/{quote(stem)}.png"
    path = job.get(url, f"missing/{stem}.png")
    pixels = _gray_pixels(path)
    got = hashlib.sha256(pixels.tobytes()).hexdigest()
    if got != want:
        path.unlink()
        raise BenchError(
            f"{path}: pixels of the file downloaded from {rebase_url(url, job.base_url)} are not "
            f"the expected ones (pixels_sha256: expected {want}, got {got}); it was deleted: "
            "run again"
        )
    return pixels


def _gray_pixels(path: Path) -> np.ndarray:
    """The 8-bit pixels of a gray image, one channel of it when stored as R = G = B (+ alpha)."""
    try:
        with Image.open(path) as im:
            pixels = np.asarray(im)
    except (OSError, UnidentifiedImageError) as exc:
        raise BenchError(f"{path}: cannot read image ({exc}); delete it and fetch again") from None
    if pixels.ndim == 3:
        color = pixels[..., :3]
        if not (color == color[..., :1]).all():
            raise BenchError(f"{path}: expected a gray image (R = G = B), channels differ")
        pixels = color[..., 0]
    if pixels.dtype != np.uint8:
        raise BenchError(f"{path}: expected 8-bit pixels, got {pixels.dtype}")
    return np.ascontiguousarray(pixels)


RECIPES: dict[str, Callable[[_Job, dict[str, Path]], None]] = {
    "files": _recipe_files,
    "metaldam": _recipe_metaldam,
    "nasa-ebc": _recipe_nasa_ebc,
}
