"""Segmentation metrics from a dataset-level confusion matrix.

Everything is computed from one confusion matrix accumulated over the whole evaluation set
(pixels pooled over images), never as a mean of per-image scores. Rows are ground truth, columns
are prediction.

A class whose union is empty (absent from both prediction and ground truth) has no defined IoU
or Dice: by default it is NaN and left out of every mean (the ``honest`` protocol). Paper
protocols may count it as 0 instead (``empty_union = "zero"``).

Merging (``merge_classes``) keeps the matrix size: merged-away classes keep their id with an
all-zero row and column, so class ids stay stable; ``protocol_score`` leaves them out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.data.cards import ProtocolSpec

MergePairs = tuple[tuple[int, int], ...]
EMPTY_UNION = ("nan", "zero")


def _as_int_array(x: Any) -> np.ndarray:
    """A numpy integer array from a numpy array, a torch tensor or a nested sequence."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"class ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_range(ids: np.ndarray, num_classes: int, what: str) -> None:
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{what} contains class id {int(bad[0])} outside 0..{num_classes - 1} "
            f"(num_classes={num_classes})"
        )


def confusion_matrix(
    pred: Any, target: Any, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """int64 [num_classes, num_classes] counts, rows = ground truth, columns = prediction.

    Pixels whose target equals ``ignore_index`` are dropped. Raises ValueError on a shape
    mismatch or a class id outside ``0..num_classes-1``.
    """
    p, t = _as_int_array(pred), _as_int_array(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    _check_range(t, num_classes, "target")
    _check_range(p, num_classes, "prediction")
    counts = np.bincount(t.ravel() * num_classes + p.ravel(), minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


class ConfusionMatrix:
    """Accumulates one confusion matrix over a whole evaluation set."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> ConfusionMatrix:
        """Add one image (or batch) of predictions and targets."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        return self

    def merged(self, pairs: MergePairs) -> np.ndarray:
        """The accumulated matrix with ``pairs`` merged (see ``merge_classes``)."""
        return merge_classes(self.matrix, pairs)


def merge_classes(cm: np.ndarray, pairs: MergePairs) -> np.ndarray:
    """Merge class ``a`` into ``b`` for each ``(a, b)``: rows and columns summed into ``b``.

    The result has the same size; each merged-away ``a`` keeps an all-zero row and column.
    Chains (a target that is itself merged away) are rejected as ambiguous.
    """
    n = cm.shape[0]
    sources = {a for a, _ in pairs}
    for a, b in pairs:
        _check_range(np.array([a, b]), n, f"merge pair ({a}, {b})")
        if b in sources:
            raise ValueError(f"merge pair ({a}, {b}): class {b} is itself merged away")
    mapping = np.arange(n)
    for a, b in pairs:
        mapping[a] = b
    out = np.zeros_like(cm)
    np.add.at(out, (mapping[:, None], mapping[None, :]), cm)
    return out


def _ratio(num: np.ndarray, den: np.ndarray, empty_union: str) -> np.ndarray:
    if empty_union not in EMPTY_UNION:
        raise ValueError(f"empty_union must be 'nan' or 'zero', got {empty_union!r}")
    fill = np.nan if empty_union == "nan" else 0.0
    out = np.full(num.shape, fill, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _tp_fp_fn(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    return tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp


def per_class_iou(cm: np.ndarray, empty_union: str = "nan") -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN); an empty union gives NaN (or 0 with ``"zero"``)."""
    tp, fp, fn = _tp_fp_fn(cm)
    return _ratio(tp, tp + fp + fn, empty_union)


def per_class_dice(cm: np.ndarray, empty_union: str = "nan") -> np.ndarray:
    """Dice_c = 2TP / (2TP + FP + FN); an empty union gives NaN (or 0 with ``"zero"``)."""
    tp, fp, fn = _tp_fp_fn(cm)
    return _ratio(2 * tp, 2 * tp + fp + fn, empty_union)


def pixel_accuracy(cm: np.ndarray) -> float:
    """Correct pixels / all counted pixels (NaN for an empty matrix)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else math.nan


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


@dataclass
class Summary:
    """Honest scores of one confusion matrix; NaN classes are left out of the means."""

    miou: float
    mdice_fg: float
    pixel_acc: float
    iou: list[float]
    dice: list[float]
    absent: list[int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: NaN becomes None."""
        d = asdict(self)
        for key in ("miou", "mdice_fg", "pixel_acc"):
            d[key] = _none_if_nan(d[key])
        for key in ("iou", "dice"):
            d[key] = [_none_if_nan(v) for v in d[key]]
        return d


def _foreground(n: int, background: int | None) -> list[int]:
    return [c for c in range(n) if c != background]


def summarize(cm: np.ndarray, background: int | None) -> Summary:
    """mIoU over all classes, mean Dice over foreground classes (all if ``background`` is None)."""
    iou, dice = per_class_iou(cm), per_class_dice(cm)
    return Summary(
        miou=_nanmean(iou),
        mdice_fg=_nanmean(dice[_foreground(len(dice), background)]),
        pixel_acc=pixel_accuracy(cm),
        iou=iou.tolist(),
        dice=dice.tolist(),
        absent=[int(c) for c in np.flatnonzero(np.isnan(iou))],
    )


def protocol_classes(n: int, spec: ProtocolSpec, background: int | None) -> list[int]:
    """The class ids ``spec`` averages over, for an ``n``-class matrix."""
    merged_away = {a for a, _ in spec.merge}
    if spec.classes is not None:
        bad = sorted(merged_away.intersection(spec.classes))
        if bad:
            raise ValueError(f"protocol '{spec.name}' averages over merged-away class(es) {bad}")
        _check_range(np.array(spec.classes), n, f"protocol '{spec.name}' classes")
        return list(spec.classes)
    if spec.foreground_only and background is None:
        raise ValueError(
            f"protocol '{spec.name}' averages foreground classes but no background is given"
        )
    skip = merged_away | ({background} if spec.foreground_only else set())
    return [c for c in range(n) if c not in skip]


def protocol_score(cm: np.ndarray, spec: ProtocolSpec, background: int | None) -> float:
    """The headline number of ``spec``: merge, per-class metric, mean over its classes.

    ``spec.resize`` is the caller's business (it changes the predictions, not this arithmetic).
    NaN if every averaged class is NaN.
    """
    merged = merge_classes(cm, spec.merge)
    if spec.metric == "iou":
        scores = per_class_iou(merged, spec.empty_union)
    elif spec.metric == "dice":
        scores = per_class_dice(merged, spec.empty_union)
    else:
        raise ValueError(f"protocol '{spec.name}': unknown metric {spec.metric!r}")
    return _nanmean(scores[protocol_classes(len(scores), spec, background)])


def absent_note(summary: Summary, class_names: tuple[str, ...] | list[str]) -> str | None:
    """One sentence naming the classes absent from prediction and ground truth, or None."""
    if not summary.absent:
        return None
    named = [f"{c} ({class_names[c]})" for c in summary.absent]
    tail = "absent from prediction and ground truth: NaN, left out of the means"
    if len(named) == 1:
        return f"class {named[0]} is {tail}"
    return f"classes {', '.join(named[:-1])} and {named[-1]} are {tail}"
