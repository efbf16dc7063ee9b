"""Dataset cards: a TOML file per dataset in ``datasets/`` describes everything the harness needs.

A new image+mask dataset needs a card only. The schema (see ``datasets/metaldam.toml``):

- top level: ``name``, ``title``, ``citation``, ``license``, ``root`` (folder under the data root),
  optional ``generator`` (procedural datasets; no files).
- ``[classes]``: ``ids``, ``names``, ``colors`` (RGB triples), ``background`` (id excluded from
  foreground means).
- ``[layout]``: ``images`` and ``masks`` path templates with ``{stem}``, ``crop_image_to_mask``
  (crop the image's bottom rows to the mask height), ``mask_channel`` (channel of a multi-channel
  mask).
- ``[splits.<name>]``: ``train``, ``test`` list files, and either ``val`` (list file) or
  ``val_holdout`` (a fixed number of train images held out for validation); ``[splits] default``.
- ``[unlabeled]``: the SSL pool: an ``images`` glob, or ``from_split = "train"`` (the split's
  training images without labels, for datasets with no separate unlabeled set), and
  ``crop_bottom`` (rows of instrument band to remove).
- ``[protocols.<name>]``: named metric protocols besides ``honest`` (``bench.finetune.metrics``).
- ``[variants.<name>]``: alternative label sets selected as ``name:variant``: ``merge = {"2" = 1}``
  maps mask ids, with the variant's own ``classes`` and, optionally, ``protocols``.
- ``[fetch]``: how ``bench data fetch`` obtains the upstream files (see ``bench.data.fetch``).
- ``[scale]``: the working scale: ``working = "native"`` (the default) or ``working = [height,
  width]`` (every image resized to it). Pretraining views, fine-tuning and evaluation work at it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.paths import PROJECT_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CARDS_PACKAGE = "microssl_bench_datasets"
"""The installed copy of ``datasets/`` (see setup.py) when the project is not a checkout."""


def _project_cards() -> Path:
    """The checkout's ``datasets/``, else the installed cards package."""
    checkout = PROJECT_ROOT / "datasets"
    if (PROJECT_ROOT / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec(CARDS_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return checkout


CARDS_DIR = _project_cards()
CARDS_ENV = "BENCH_CARDS"
"""More folders of cards (``os.pathsep``-separated), searched after the project's own."""


def card_dirs() -> list[Path]:
    """Where cards are looked up, in order: the project's ``datasets/``, then ``$BENCH_CARDS``."""
    extra = [Path(p).expanduser() for p in os.environ.get(CARDS_ENV, "").split(os.pathsep) if p]
    return [CARDS_DIR, *extra]


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class SplitSpec:
    name: str
    train: str
    test: str
    val: str | None = None
    val_holdout: int | None = None


@dataclass(frozen=True)
class ProtocolSpec:
    """How one named protocol turns predictions into a headline number.

    metric: ``iou`` (mean IoU) or ``dice`` (mean Dice); classes: ids averaged (None = all,
    ``foreground_only`` drops the background); empty_union: ``nan`` (class left out of the mean) or
    ``zero`` (counted as 0, as some papers do); resize: evaluate on images resized to (H, W) instead
    of native resolution; merge: class ids mapped onto others in prediction and ground truth first.
    """

    name: str
    metric: str = "iou"
    classes: tuple[int, ...] | None = None
    foreground_only: bool = False
    empty_union: str = "nan"
    resize: tuple[int, int] | None = None
    merge: tuple[tuple[int, int], ...] = ()
    description: str = ""


HONEST = ProtocolSpec(
    name="honest",
    description="mIoU over all classes at native resolution; a class absent from prediction and "
    "ground truth is NaN and left out of the mean",
)


@dataclass(frozen=True)
class LayoutSpec:
    images: str
    masks: str
    crop_image_to_mask: bool = False
    mask_channel: int = 0
    high_bit_depth: str | int = "full"
    """How images with more than 8 bits become 8-bit (``bench.data.images.read_gray``)."""
    image_channel: int | None = None
    """The channel of a colour image to use (None: ITU-R 601 luma)."""


@dataclass(frozen=True)
class UnlabeledSpec:
    """The SSL pool: the files matching ``images``, or with ``from_split`` the run's split's
    training images whose labels the shots are drawn from (masks never read; never validation or
    test images), for datasets without a separate unlabeled set."""

    images: str | None = None
    crop_bottom: int = 0
    from_split: bool = False
    exclude: tuple[str, ...] = ()
    """Pool images (``unlabeled/<file name>``, or training stems of a ``from_split`` pool) that
    no honest pool uses, besides the near-duplicates found automatically."""
    neardup_threshold: float = 0.5
    """Thumbnail correlation at or above which two images are near-duplicates."""


@dataclass(frozen=True)
class ScaleSpec:
    """The working scale: native pixels (``resize`` None) or every image resized to ``resize``
    (height, width), aspect ratio not kept."""

    resize: tuple[int, int] | None = None

    def describe(self) -> str:
        return "native" if self.resize is None else f"{self.resize[0]}x{self.resize[1]}"


NATIVE = ScaleSpec()


@dataclass(frozen=True)
class DatasetCard:
    name: str
    title: str
    citation: str
    license: str
    root: str
    classes: tuple[ClassInfo, ...]
    background: int | None
    layout: LayoutSpec | None
    splits: dict[str, SplitSpec]
    default_split: str
    unlabeled: UnlabeledSpec | None
    protocols: dict[str, ProtocolSpec]
    default_protocol: str
    path: Path
    variant: str | None = None
    merge: tuple[tuple[int, int], ...] = ()
    generator: dict[str, Any] = field(default_factory=dict)
    fetch: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    scale: ScaleSpec = NATIVE

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def full_name(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name

    def split(self, name: str | None) -> SplitSpec:
        key = name or self.default_split
        if key not in self.splits:
            raise BenchError(
                f"{self.path}: dataset '{self.name}' has no split '{key}'; "
                f"splits: {', '.join(self.splits)}"
            )
        return self.splits[key]

    def protocol(self, name: str) -> ProtocolSpec:
        if name == "honest":
            return HONEST
        if name not in self.protocols:
            raise BenchError(
                f"{self.path}: dataset '{self.name}' defines no protocol '{name}'; "
                f"protocols: honest, {', '.join(self.protocols)}"
            )
        return self.protocols[name]

    def all_protocols(self) -> list[ProtocolSpec]:
        return [HONEST, *self.protocols.values()]


def available_cards(cards_dir: Path | None = None) -> list[str]:
    """Card names in ``cards_dir``, else in every folder of ``card_dirs()``."""
    dirs = [cards_dir] if cards_dir is not None else card_dirs()
    return sorted({p.stem for d in dirs for p in d.glob("*.toml")})


def find_card(base: str, cards_dir: Path | None = None) -> Path:
    """The file of card ``base``: the first ``<dir>/<base>.toml`` of the search path."""
    dirs = [cards_dir] if cards_dir is not None else card_dirs()
    if base and "/" not in base and "\\" not in base and base not in (".", ".."):
        for folder in dirs:
            if (folder / f"{base}.toml").is_file():
                return folder / f"{base}.toml"
    raise BenchError(
        f"unknown dataset '{base}': no card {base}.toml in {', '.join(map(str, dirs))}; "
        f"known: {', '.join(available_cards(cards_dir))} (more card folders: --cards DIR or "
        f"${CARDS_ENV})"
    )


def load_card(name: str, cards_dir: Path | None = None) -> DatasetCard:
    """Load card ``<name>.toml`` from the search path; ``name:variant`` selects a label variant."""
    base, _, variant = name.partition(":")
    return parse_card(find_card(base, cards_dir), variant or None)


def parse_card(path: Path, variant: str | None = None) -> DatasetCard:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _build_card(raw, path, variant)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # AttributeError / IndexError: a table where a value was expected (or the reverse), a
        # too-short list (e.g. ``resize = [512]``).
        raise BenchError(f"{path}: bad dataset card: {_describe(exc)}") from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return str(exc)


_PROTOCOL_KEYS = {"metric", "classes", "empty_union", "resize", "merge", "description"}
_CLASSES_KEYS = {"ids", "names", "colors", "background"}
SCHEMA: dict[str, Any] = {
    "name": None,
    "title": None,
    "root": None,
    "license": None,
    "citation": None,
    "generator": {"kind", "seed", "size", "train", "val", "test", "unlabeled"},
    "classes": _CLASSES_KEYS,
    "layout": {"images", "masks", "crop_image_to_mask", "mask_channel", "high_bit_depth",
               "image_channel"},
    "splits": ("default", {"train", "test", "val", "val_holdout"}),
    "unlabeled": {"images", "crop_bottom", "from_split", "exclude", "neardup_threshold"},
    "protocols": ("default", _PROTOCOL_KEYS),
    "variants": (
        None, {"merge": None, "classes": _CLASSES_KEYS, "protocols": ("default", _PROTOCOL_KEYS)},
    ),
    "scale": {"working"},
    "fetch": {
        "recipe", "checksums", "files", "cache", "base", "commit", "manifest", "missing",
    },
}  # fmt: skip
"""The keys a card may hold: None = any value; a set = a table of those keys; a dict = a table of
those keys with their own schema; (key, schema) = a table of named sub-tables of that schema, plus
the plain key ``key``."""


def _check_keys(raw: dict[str, Any], schema: Any, where: str) -> None:
    """Unknown keys and tables are errors naming the key."""
    if schema is None:
        return
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table, got {raw!r}")
    if isinstance(schema, tuple):
        plain, sub = schema
        for key, value in raw.items():
            if key != plain:
                _check_keys(value, sub, f"{where}.{key}")
        return
    allowed = schema if isinstance(schema, dict) else dict.fromkeys(schema)
    for key, value in raw.items():
        name = f"{where}.{key}" if where else key
        if key not in allowed:
            kind = "table" if isinstance(value, dict) else "key"
            raise ValueError(
                f"unknown {kind} '{name}' (allowed{' in ' + where if where else ''}: "
                f"{', '.join(sorted(allowed))})"
            )
        _check_keys(value, allowed[key], name)


def _bit_depth(value: Any) -> str | int:
    if value in ("full", "stretch"):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and 8 <= value <= 32:
        return value
    raise ValueError(
        f'layout.high_bit_depth must be "full", "stretch" or a bit depth 8..32, got {value!r}'
    )


def _req(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise ValueError(f"missing field '{where}.{key}'" if where else f"missing field '{key}'")
    return table[key]


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    return value


def _relative(value: Any, field: str) -> str:
    """A path (or glob) inside the dataset folder: relative, with no ``..`` part."""
    text = _str(value, field)
    parts = text.replace("\\", "/").split("/")
    if not text or text.startswith(("/", "\\", "~")) or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"{field} = {text!r} must be a relative path inside the dataset folder")
    if ".." in parts:
        raise ValueError(f"{field} = {text!r} must not contain '..' (it would leave the folder)")
    return text


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {value!r}")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be true or false, got {value!r}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be a number, got {value!r}")
    return float(value)


def _build_card(raw: dict[str, Any], path: Path, variant: str | None) -> DatasetCard:
    _check_keys(raw, dict(SCHEMA), "")
    name = _str(_req(raw, "name", ""), "name")
    if name != path.stem:
        raise ValueError(f"name = {name!r} must equal the file name's stem {path.stem!r}")
    classes_raw = _req(raw, "classes", "")
    protocols_raw = dict(raw.get("protocols", {}))
    merge: tuple[tuple[int, int], ...] = ()
    if variant is not None:
        variants = raw.get("variants", {})
        if variant not in variants:
            raise ValueError(f"no variant '{variant}' (variants: {', '.join(variants) or 'none'})")
        spec = variants[variant]
        if "classes" in spec:
            classes_raw = spec["classes"]
        protocols_raw = dict(spec.get("protocols", protocols_raw))
        merge = _merge_pairs(spec.get("merge", {}))
    classes = _parse_classes(classes_raw, f"variants.{variant}.classes" if variant else "classes")
    ids = [c.id for c in classes]
    if ids != list(range(len(ids))):
        raise ValueError(f"class ids must be 0..{len(ids) - 1} in order, got {ids}")
    if variant is not None:
        _check_variant_merge(variant, [int(i) for i in raw["classes"]["ids"]], ids, merge)
    background = classes_raw.get("background")
    if background is not None and background not in ids:
        raise ValueError(f"background class {background} is not one of the class ids {ids}")

    layout = None
    if "layout" in raw:
        lay = raw["layout"]
        layout = LayoutSpec(
            images=_relative(_req(lay, "images", "layout"), "layout.images"),
            masks=_relative(_req(lay, "masks", "layout"), "layout.masks"),
            crop_image_to_mask=_bool(
                lay.get("crop_image_to_mask", False), "layout.crop_image_to_mask"
            ),
            mask_channel=_int(lay.get("mask_channel", 0), "layout.mask_channel"),
            high_bit_depth=_bit_depth(lay.get("high_bit_depth", "full")),
            image_channel=(
                _int(lay["image_channel"], "layout.image_channel")
                if "image_channel" in lay
                else None
            ),
        )
        for key, template in (("layout.images", layout.images), ("layout.masks", layout.masks)):
            if "{stem}" not in template:
                raise ValueError(f"{key} must contain '{{stem}}', got {template!r}")

    splits_raw = dict(raw.get("splits", {}))
    default_split = splits_raw.pop("default", None)
    splits = {name: _parse_split(name, spec) for name, spec in splits_raw.items()}
    if not raw.get("generator") and not splits:
        raise ValueError("no [splits.<name>] table")
    if default_split is None and splits:
        default_split = next(iter(splits))
    if splits and default_split not in splits:
        raise ValueError(f"splits.default = {default_split!r} is not a defined split")

    unlabeled = None
    if "unlabeled" in raw:
        unlabeled = _parse_unlabeled(raw["unlabeled"])

    default_protocol = protocols_raw.pop("default", "honest")
    protocols = {
        name: _parse_protocol(name, spec, ids, background) for name, spec in protocols_raw.items()
    }
    if default_protocol != "honest" and default_protocol not in protocols:
        raise ValueError(f"protocols.default = {default_protocol!r} is not a defined protocol")

    return DatasetCard(
        name=name,
        title=_str(raw.get("title", name), "title"),
        citation=_str(raw.get("citation", ""), "citation"),
        license=_str(raw.get("license", "not stated"), "license"),
        root=_relative(raw.get("root", name), "root"),
        classes=tuple(classes),
        background=background,
        layout=layout,
        splits=splits,
        default_split=default_split or "",
        unlabeled=unlabeled,
        protocols=protocols,
        default_protocol=default_protocol,
        path=path,
        variant=variant,
        merge=merge,
        generator=dict(raw.get("generator", {})),
        fetch=dict(raw.get("fetch", {})),
        raw=raw,
        scale=_parse_scale(raw.get("scale", {})),
    )


def _parse_classes(raw: dict[str, Any], where: str = "classes") -> list[ClassInfo]:
    ids_raw, names_raw, colors_raw = (_req(raw, k, where) for k in ("ids", "names", "colors"))
    for key, value in (("ids", ids_raw), ("names", names_raw), ("colors", colors_raw)):
        if not isinstance(value, list):
            raise ValueError(f"{where}.{key} must be a list, got {value!r}")
    ids = [_int(i, f"{where}.ids[{n}]") for n, i in enumerate(ids_raw)]
    names = [_str(x, f"{where}.names[{n}]") for n, x in enumerate(names_raw)]
    colors = []
    for n, c in enumerate(colors_raw):
        if not isinstance(c, list):
            raise ValueError(f"{where}.colors[{n}] must be an RGB triple, got {c!r}")
        colors.append(tuple(_int(v, f"{where}.colors[{n}]") for v in c))
    if not (len(ids) == len(names) == len(colors)):
        raise ValueError(
            f"classes.ids, classes.names and classes.colors differ in length "
            f"({len(ids)}, {len(names)}, {len(colors)})"
        )
    triples = []
    for color in colors:
        if len(color) != 3 or not all(0 <= v <= 255 for v in color):
            raise ValueError(f"class colour {color} is not an RGB triple in 0..255")
        triples.append((color[0], color[1], color[2]))
    return [ClassInfo(int(i), str(n), c) for i, n, c in zip(ids, names, triples, strict=True)]


def _parse_split(name: str, raw: dict[str, Any]) -> SplitSpec:
    where = f"splits.{name}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table, got {raw!r}")
    val, holdout = raw.get("val"), raw.get("val_holdout")
    if (val is None) == (holdout is None):
        raise ValueError(f"split '{name}' needs exactly one of 'val' (list file) or 'val_holdout'")
    if holdout is not None and _int(holdout, f"{where}.val_holdout") < 1:
        raise ValueError(f"{where}.val_holdout must be ≥ 1, got {holdout}")
    return SplitSpec(
        name=name,
        train=_relative(_req(raw, "train", where), f"{where}.train"),
        test=_relative(_req(raw, "test", where), f"{where}.test"),
        val=_relative(val, f"{where}.val") if val is not None else None,
        val_holdout=holdout,
    )


def _check_variant_merge(
    variant: str, base_ids: list[int], ids: list[int], merge: tuple[tuple[int, int], ...]
) -> None:
    """Every mask id of the base card must end up as one of the variant's class ids."""
    mapping = dict(merge)
    for src, dst in merge:
        if src not in base_ids:
            raise ValueError(
                f"variant '{variant}': merge source {src} is not one of the card's class ids "
                f"{base_ids}"
            )
        if dst not in ids:
            raise ValueError(
                f"variant '{variant}': merge target {dst} is not one of the variant's class "
                f"ids {ids}"
            )
    unmapped = [i for i in base_ids if i not in mapping and i not in ids]
    if unmapped:
        raise ValueError(
            f"variant '{variant}': class id(s) {unmapped} of the card are neither merged nor "
            f"variant class ids {ids}"
        )


def _merge_pairs(raw: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    return tuple(sorted((int(k), int(v)) for k, v in raw.items()))


def _parse_protocol(
    name: str, raw: dict[str, Any], ids: list[int], background: int | None
) -> ProtocolSpec:
    metric = raw.get("metric", "iou")
    if metric not in ("iou", "dice"):
        raise ValueError(f"protocol '{name}': metric must be 'iou' or 'dice', got {metric!r}")
    empty = raw.get("empty_union", "nan")
    if empty not in ("nan", "zero"):
        raise ValueError(f"protocol '{name}': empty_union must be 'nan' or 'zero', got {empty!r}")
    classes_raw = raw.get("classes", "all")
    foreground_only = classes_raw == "foreground"
    if foreground_only and background is None:
        raise ValueError(f"protocol '{name}': classes = 'foreground' needs classes.background")
    classes: tuple[int, ...] | None = None
    if isinstance(classes_raw, list):
        classes = tuple(int(c) for c in classes_raw)
    elif classes_raw not in ("all", "foreground"):
        raise ValueError(f"protocol '{name}': classes must be a list, 'all' or 'foreground'")
    merge = _merge_pairs(raw.get("merge", {}))
    valid = set(ids)
    for c in (*(classes or ()), *(x for pair in merge for x in pair)):
        if c not in valid:
            raise ValueError(f"protocol '{name}': class {c} is not one of the class ids {ids}")
    resize = raw.get("resize")
    if resize is not None and (not isinstance(resize, list) or len(resize) != 2):
        raise ValueError(f"protocol '{name}': resize must be [height, width], got {resize!r}")
    return ProtocolSpec(
        name=name,
        metric=metric,
        classes=classes,
        foreground_only=foreground_only,
        empty_union=empty,
        resize=(
            (
                _int(resize[0], f"protocols.{name}.resize"),
                _int(resize[1], f"protocols.{name}.resize"),
            )
            if resize
            else None
        ),
        merge=merge,
        description=_str(raw.get("description", ""), f"protocols.{name}.description"),
    )


def _parse_unlabeled(unl: dict[str, Any]) -> UnlabeledSpec:
    source = unl.get("from_split")
    if source is not None and source != "train":
        raise ValueError(
            f'unlabeled.from_split = {source!r}: only "train" is allowed (the '
            "training images; validation and test images never enter pretraining)"
        )
    if (source is None) == ("images" not in unl):
        raise ValueError(
            '[unlabeled] needs exactly one of images = "<glob>" or from_split = "train"'
        )
    exclude = unl.get("exclude", [])
    if not isinstance(exclude, list):
        raise ValueError(f"unlabeled.exclude must be a list of names, got {exclude!r}")
    images = unl.get("images")
    return UnlabeledSpec(
        images=_relative(images, "unlabeled.images") if images is not None else None,
        crop_bottom=_int(unl.get("crop_bottom", 0), "unlabeled.crop_bottom"),
        from_split=source is not None,
        exclude=tuple(_str(x, "unlabeled.exclude") for x in exclude),
        neardup_threshold=_number(unl.get("neardup_threshold", 0.5), "unlabeled.neardup_threshold"),
    )


def _parse_scale(raw: dict[str, Any]) -> ScaleSpec:
    working = raw.get("working", "native")
    if working == "native":
        return NATIVE
    if (
        not isinstance(working, list)
        or len(working) != 2
        or not all(isinstance(v, int) and v >= 32 for v in working)
    ):
        raise ValueError(
            f'scale.working must be "native" or [height, width] (integers ≥ 32), got {working!r}'
        )
    return ScaleSpec((working[0], working[1]))
