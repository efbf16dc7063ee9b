"""``python -m bench data check NAME``: is a prepared dataset complete and consistent with its card?

Every image, mask and pool file is decoded in full by the same functions loading uses, so a file
``check`` passes is a file a run accepts.

``check_dataset`` returns one human-readable line per problem, each naming the file concerned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.core.errors import BenchError
from bench.data.cards import DatasetCard
from bench.data.filecache import file_digest
from bench.data.images import read_gray
from bench.data.neardup import scan_card
from bench.data.pool import pool_members
from bench.data.protocol import partition
from bench.data.sources import GeneratedSource, source_for

ALPHA_MODES = ("LA", "PA", "RGBA")


def check_dataset(card: DatasetCard, data_root: Path) -> list[str]:
    """Problems found in ``data_root/card.root`` (an empty list: the dataset is ready)."""
    if isinstance(source_for(card, data_root), GeneratedSource):
        return []
    root = Path(data_root) / card.root
    if not root.is_dir():
        return [
            f"{root}: dataset folder missing; run `python -m bench data fetch {card.name}`, or set "
            f"BENCH_DATA_ROOT / --data-root to the folder that contains {card.root}/"
        ]
    stems, problems = _split_stems(card, root)
    if not problems:
        problems += _check_splits(card, data_root)
    if card.layout is not None:
        allowed = set(card.class_ids) | {src for src, _ in card.merge}
        source = source_for(card, data_root)
        for stem, listed_in in stems.items():
            found = _check_pair(card, root, stem, listed_in, allowed)
            if not found:  # decode fully, exactly as loading does
                try:
                    source.labeled([stem])
                except BenchError as exc:
                    found = [str(exc)]
            problems += found
    return problems + _check_checksums(card, root) + _check_unlabeled(card, root)


def read_checksums(path: Path) -> dict[str, str]:
    """``sha256sum``-style lines (``<hex>  <path>``) as {relative path: sha256}."""
    sums = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise BenchError(f"{path}:{n}: expected '<sha256>  <path>', got {line!r}")
        sums[parts[1].lstrip("*").removeprefix("./")] = parts[0].lower()
    return sums


def _split_stems(card: DatasetCard, root: Path) -> tuple[dict[str, str], list[str]]:
    """Every stem named by the card's split lists -> the first list naming it; plus problems."""
    stems: dict[str, str] = {}
    problems = []
    lists = {f for spec in card.splits.values() for f in (spec.train, spec.test, spec.val) if f}
    for rel in sorted(lists):
        path = root / rel
        if not path.is_file():
            problems.append(f"{path}: split list missing")
            continue
        names = [s.strip() for s in path.read_text().splitlines() if s.strip()]
        if not names:
            problems.append(f"{path}: split list is empty")
        for stem in names:
            stems.setdefault(stem, rel)
    return stems, problems


def _check_splits(card: DatasetCard, data_root: Path) -> list[str]:
    """Each split's lists are disjoint (train/test, val/test) and name no stem twice."""
    problems = []
    source = source_for(card, data_root)
    for split in card.splits:
        lists = source.split_lists(split)
        for part, stems in (("train", lists.train), ("val", lists.val), ("test", lists.test)):
            repeated = sorted({s for s in stems or [] if (stems or []).count(s) > 1})
            if repeated:
                problems.append(f"{lists.files[part]}: names {', '.join(repeated)} twice")
        try:
            partition(card, data_root, split)
        except BenchError as exc:
            problems.append(str(exc))
    return problems


def _check_pair(
    card: DatasetCard, root: Path, stem: str, listed_in: str, allowed: set[int]
) -> list[str]:
    layout = card.layout
    assert layout is not None
    image_path = root / layout.images.replace("{stem}", stem)
    mask_path = root / layout.masks.replace("{stem}", stem)
    missing = [
        f"{p}: {what} missing (stem '{stem}' is listed in {listed_in})"
        for p, what in ((image_path, "image"), (mask_path, "mask"))
        if not p.is_file()
    ]
    if missing:
        return missing
    try:
        with Image.open(image_path) as im:
            width, height = im.size
    except (OSError, UnidentifiedImageError) as exc:
        return [f"{image_path}: image cannot be read ({exc})"]
    try:
        with Image.open(mask_path) as im:
            mask = _mask_array(im, layout.mask_channel)
    except (OSError, UnidentifiedImageError) as exc:
        return [f"{mask_path}: mask cannot be read ({exc})"]
    if isinstance(mask, str):
        return [f"{mask_path}: {mask}"]
    problems = []
    mask_h, mask_w = mask.shape
    if layout.crop_image_to_mask:
        if mask_w != width or mask_h > height:
            problems.append(
                f"{mask_path}: mask is {mask_w}x{mask_h} but image {image_path.name} is "
                f"{width}x{height} (need the same width and a mask no taller than the image)"
            )
    elif (mask_w, mask_h) != (width, height):
        problems.append(
            f"{mask_path}: mask is {mask_w}x{mask_h} but image {image_path.name} "
            f"is {width}x{height}"
        )
    bad = sorted(set(np.unique(mask).tolist()) - allowed)
    if bad:
        problems.append(
            f"{mask_path}: mask values {bad} are not class ids of {card.full_name} "
            f"(allowed: {sorted(allowed)})"
        )
    return problems


def _mask_array(im: Image.Image, channel: int) -> np.ndarray | str:
    """The 2-D class-id array of a mask, or a string saying why it is not a valid mask."""
    arr = np.asarray(im)
    if arr.ndim == 2:
        return arr
    if im.mode in ALPHA_MODES:
        arr = arr[..., :-1]
    if not 0 <= channel < arr.shape[-1]:
        return f"layout.mask_channel = {channel} but the mask has {arr.shape[-1]} channels"
    if not all(np.array_equal(arr[..., c], arr[..., 0]) for c in range(1, arr.shape[-1])):
        return f"mask has {arr.shape[-1]} channels that differ (a colour image, not class ids?)"
    return arr[..., channel]


def _check_checksums(card: DatasetCard, root: Path) -> list[str]:
    name = card.fetch.get("checksums")
    if not name:
        return []
    sums_path = card.path.parent / name
    if not sums_path.is_file():
        return [f"{sums_path}: checksums file named by {card.path} [fetch] is missing"]
    problems = []
    for rel, digest in read_checksums(sums_path).items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{path}: missing (listed in {sums_path.name})")
        elif (got := file_digest(path)) != digest:
            problems.append(
                f"{path}: sha256 mismatch (listed in {sums_path.name}): "
                f"expected {digest}, got {got}"
            )
    return problems


def _check_unlabeled(card: DatasetCard, root: Path) -> list[str]:
    if card.unlabeled is None or card.unlabeled.images is None:
        return []  # a pool of training images (from_split) is checked with the labeled images
    files = sorted(root.glob(card.unlabeled.images))
    if not files:
        return [f"{root / card.unlabeled.images}: no unlabeled images match this pattern"]
    problems = []
    for path in files:
        try:
            read_gray(path, card)  # the whole file, by loading's rules
        except BenchError as exc:
            problems.append(f"{path}: unlabeled image: {exc}")
    return problems


def neardup_report(card: DatasetCard, data_root: Path) -> tuple[list[str], list[str]]:
    """Lines describing the card's near-duplicate pairs, the measured gap and each split's honest
    pool; plus problems (a training image near-duplicating an evaluation image of the same split,
    an ``exclude`` entry naming no pool image)."""
    if isinstance(source_for(card, data_root), GeneratedSource):
        return [], []
    found = scan_card(card, data_root)
    parts = _parts(card, data_root)
    roles = _roles(parts)
    lines = [
        f"near-duplicates (thumbnail correlation ≥ {found.threshold:.2f}, rotations and flips "
        f"considered): {len(found.pairs)} pair(s) among {len(found.names)} images"
    ]
    low = "–" if found.lowest_pair is None else f"{found.lowest_pair:.3f}"
    high = "–" if found.highest_other is None else f"{found.highest_other:.3f}"
    lines.append(f"gap: the pairs score ≥ {low}; every other pair of images ≤ {high}")
    margin = 0.1
    if (found.lowest_pair is not None and found.lowest_pair < found.threshold + margin) or (
        found.highest_other is not None and found.highest_other > found.threshold - margin
    ):
        lines.append(
            f"warning: a score lies within {margin} of the threshold; look at those images and "
            "list any missed near-duplicate in [unlabeled] exclude"
        )
    problems = []
    for pair in found.pairs:
        where = "; ".join(f"{n}: {roles[n]}" for n in (pair.a, pair.b) if roles.get(n))
        lines.append(
            f"  {pair.score:.4f}  {pair.a} ~ {pair.b} ({pair.transform})"
            + (f"  [{where}]" if where else "")
        )
        for split, stems in parts.items():
            kinds = {stems.get(pair.a), stems.get(pair.b)}
            if "train" in kinds and kinds & {"val", "test"}:
                problems.append(
                    f"{card.path}: split '{split}': {pair.a} and {pair.b} are near-duplicates "
                    f"(score {pair.score:.3f}) but one is a training image and the other is "
                    "evaluated"
                )
    if card.unlabeled is not None:
        members = {name for name, _ in pool_members(card, data_root, mode="transductive")}
        for name in card.unlabeled.exclude:
            if name not in members:
                problems.append(
                    f"{card.path}: [unlabeled] exclude names {name!r}, which is no pool image "
                    "(expected unlabeled/<file name> or a training stem)"
                )
        for split in card.splits:
            total = len(pool_members(card, data_root, split, "transductive"))
            honest = len(pool_members(card, data_root, split, "honest"))
            lines.append(
                f"honest pool of {split}: {honest} of {total} images ({total - honest} left out)"
            )
    return lines, problems


def _parts(card: DatasetCard, data_root: Path) -> dict[str, dict[str, str]]:
    """Split -> labeled stem -> ``train``, ``val`` or ``test``."""
    parts: dict[str, dict[str, str]] = {}
    for split in card.splits:
        part = partition(card, data_root, split)
        parts[split] = {
            **dict.fromkeys(part.pool, "train"),
            **dict.fromkeys(part.val, "val"),
            **dict.fromkeys(part.test, "test"),
        }
    return parts


def _roles(parts: dict[str, dict[str, str]]) -> dict[str, str]:
    """Labeled stem -> e.g. ``val of fold0, test of fold5`` (training roles omitted)."""
    roles: dict[str, list[str]] = {}
    for split, stems in parts.items():
        for stem, kind in stems.items():
            if kind != "train":
                roles.setdefault(stem, []).append(f"{kind} of {split}")
    return {stem: ", ".join(r) for stem, r in roles.items()}
