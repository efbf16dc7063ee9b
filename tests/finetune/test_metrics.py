"""Hand-computed checks of bench.finetune.metrics; each expected value is worked out below."""

from __future__ import annotations

import json
import math
from fractions import Fraction as F

import numpy as np
import pytest

from bench.data.cards import HONEST, ProtocolSpec, load_card
from bench.finetune.metrics import (
    ConfusionMatrix,
    absent_note,
    confusion_matrix,
    merge_classes,
    per_class_dice,
    per_class_iou,
    pixel_accuracy,
    protocol_score,
    summarize,
)

# Rows = ground truth, columns = prediction.
#            p0 p1 p2
CM3 = np.array(
    [
        [5, 1, 0],  # g0: row 6
        [2, 3, 1],  # g1: row 6
        [0, 1, 2],
    ]
)  # g2: row 3
# columns: c0 = 7, c1 = 5, c2 = 3; total 15, trace 10.
# class 0: TP 5, FP 7-5 = 2, FN 6-5 = 1 -> IoU 5/8,  Dice 10/13
# class 1: TP 3, FP 5-3 = 2, FN 6-3 = 3 -> IoU 3/8,  Dice 6/11
# class 2: TP 2, FP 3-2 = 1, FN 3-2 = 1 -> IoU 2/4,  Dice 4/6
IOU3 = [F(5, 8), F(3, 8), F(1, 2)]
DICE3 = [F(10, 13), F(6, 11), F(2, 3)]


def close(values, expected) -> bool:
    expected = [float(e) for e in expected]
    return np.allclose(np.asarray(values, dtype=float), expected, equal_nan=True)


# --- confusion matrix -----------------------------------------------------------------------------


def test_confusion_matrix_rows_are_ground_truth():
    target = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    # pairs (gt, pred): (0,0) (0,1) (1,1) (1,2) (2,2) (2,0)
    expected = [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    cm = confusion_matrix(pred, target, 3)
    assert cm.dtype == np.int64
    assert cm.tolist() == expected


def test_confusion_matrix_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    target = torch.tensor([[0, 1], [2, 2]])
    pred = torch.tensor([[0, 1], [1, 2]])
    assert confusion_matrix(pred, target, 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_ignore_index_drops_pixels_whatever_their_prediction():
    target = np.array([0, 1, 255, 255, 1])
    pred = np.array([0, 1, 7, 0, 0])  # 7 is out of range but sits on an ignored pixel
    assert confusion_matrix(pred, target, 2, ignore_index=255).tolist() == [[1, 0], [1, 1]]


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        ([0, 1], [0, 3], "target contains class id 3 outside 0..2"),
        ([0, -1], [0, 1], "prediction contains class id -1 outside 0..2"),
    ],
)
def test_out_of_range_id_is_a_value_error_naming_the_id(pred, target, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(pred), np.array(target), 3)


def test_shape_mismatch_and_float_ids_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 2)
    with pytest.raises(ValueError, match="integers"):
        confusion_matrix(np.zeros(3), np.zeros(3, int), 2)


# --- per-class scores on the hand-written 3x3 matrix ----------------------------------------------


def test_per_class_iou_and_dice_by_hand():
    assert close(per_class_iou(CM3), IOU3)
    assert close(per_class_dice(CM3), DICE3)
    assert pixel_accuracy(CM3) == pytest.approx(10 / 15)


def test_summary_by_hand():
    s = summarize(CM3, background=0)
    assert s.miou == pytest.approx(float(sum(IOU3) / 3))  # (5/8 + 3/8 + 1/2) / 3 = 1/2
    assert s.mdice_fg == pytest.approx(float((F(6, 11) + F(2, 3)) / 2))  # = 20/33
    assert s.pixel_acc == pytest.approx(2 / 3)
    assert s.absent == []
    assert absent_note(s, ["a", "b", "c"]) is None


# --- NaN rules ------------------------------------------------------------------------------------

# Class 3 is absent from prediction and ground truth.
CM4 = np.array([[3, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
# IoU: c0 3/(3+1+1) = 3/5, c1 2/(2+1+1) = 1/2, c2 1/1 = 1, c3 0/0 -> NaN (or 0)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    assert close(per_class_iou(CM4), [F(3, 5), F(1, 2), 1, math.nan])
    s = summarize(CM4, background=0)
    assert s.miou == pytest.approx((0.6 + 0.5 + 1) / 3)  # 0.7, class 3 left out
    assert s.absent == [3]
    assert protocol_score(CM4, HONEST, background=0) == pytest.approx(0.7)
    note = absent_note(s, ["m", "a", "b", "Defect"])
    assert note == (
        "class 3 (Defect) is absent from prediction and ground truth: NaN, left out of the means"
    )


def test_empty_union_zero_counts_the_absent_class_as_zero():
    assert close(per_class_iou(CM4, empty_union="zero"), [F(3, 5), F(1, 2), 1, 0])
    assert close(per_class_dice(CM4, empty_union="zero")[3:], [0])
    zero = ProtocolSpec(name="zero", empty_union="zero")
    assert protocol_score(CM4, zero, background=0) == pytest.approx((0.6 + 0.5 + 1 + 0) / 4)


def test_empty_union_value_is_checked():
    with pytest.raises(ValueError, match="empty_union"):
        per_class_iou(CM4, empty_union="skip")


def test_everything_nan_gives_nan_and_json_safe_summary():
    empty = np.zeros((2, 2), dtype=np.int64)
    assert math.isnan(protocol_score(empty, HONEST, background=0))
    s = summarize(empty, background=0)
    d = s.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["miou"] is None and d["pixel_acc"] is None and d["iou"] == [None, None]
    assert absent_note(s, ["bg", "fg"]) == (
        "classes 0 (bg) and 1 (fg) are absent from prediction and ground truth: "
        "NaN, left out of the means"
    )


# --- accumulation over a set ----------------------------------------------------------------------


def test_accumulation_equals_one_matrix_over_the_concatenation_not_mean_of_images():
    gt_a, pr_a = np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])  # CM [[3,0],[1,0]]
    gt_b, pr_b = np.array([0, 1, 1, 1]), np.array([0, 1, 1, 1])  # CM [[1,0],[0,3]]
    acc = ConfusionMatrix(2).update(pr_a, gt_a).update(pr_b, gt_b)
    whole = confusion_matrix(np.concatenate([pr_a, pr_b]), np.concatenate([gt_a, gt_b]), 2)
    assert acc.matrix.tolist() == whole.tolist() == [[4, 0], [1, 3]]
    # pooled: IoU0 = 4/5, IoU1 = 3/4 -> mIoU 31/40
    pooled = summarize(acc.matrix, background=0).miou
    assert pooled == pytest.approx(31 / 40)
    # per image: A (3/4 + 0/1)/2 = 3/8, B (1 + 1)/2 = 1 -> mean 11/16, a different number
    images = [(pr_a, gt_a), (pr_b, gt_b)]
    per_image = [summarize(confusion_matrix(p, g, 2), 0).miou for p, g in images]
    assert np.mean(per_image) == pytest.approx(11 / 16)
    assert pooled != pytest.approx(np.mean(per_image))


def test_accumulator_honours_ignore_index():
    acc = ConfusionMatrix(2, ignore_index=255).update([0, 1], [255, 1])
    assert acc.matrix.tolist() == [[0, 0], [0, 1]]


# --- merging --------------------------------------------------------------------------------------

# EBC-like: 0 background, 1 oxide, 2 crack.
CM_EBC = np.array([[10, 2, 1], [1, 5, 2], [2, 1, 3]])
# merged 2 -> 1: [[10, 2+1], [1+2, 5+2+1+3]] = [[10, 3], [3, 11]], class 2 row/col zero


def test_merge_keeps_ids_and_zeroes_the_merged_class():
    assert merge_classes(CM_EBC, ((2, 1),)).tolist() == [[10, 3, 0], [3, 11, 0], [0, 0, 0]]
    assert ConfusionMatrix(3).merged(((2, 1),)).sum() == 0
    assert merge_classes(CM_EBC, ()).tolist() == CM_EBC.tolist()


def test_merge_rejects_chains_and_unknown_ids():
    with pytest.raises(ValueError, match="itself merged away"):
        merge_classes(CM_EBC, ((2, 1), (1, 0)))
    with pytest.raises(ValueError, match="class id 5"):
        merge_classes(CM_EBC, ((5, 1),))


# --- paper protocols from the dataset cards -------------------------------------------------------

# MetalDAM-like: 0 Matrix, 1 Austenite, 2 M/A, 3 Precipitate, 4 Defect (absent).
CM_DAM = np.array(
    [
        [8, 1, 0, 1, 0],  # row 10
        [1, 4, 1, 0, 0],  # row 6
        [0, 1, 3, 0, 0],  # row 4
        [1, 0, 0, 1, 0],  # row 2
        [0, 0, 0, 0, 0],
    ]
)
# columns: 10, 6, 4, 2, 0
# IoU:  c0 8/(8+2+2) = 2/3, c1 4/(4+2+2) = 1/2, c2 3/(3+1+1) = 3/5, c3 1/(1+1+1) = 1/3, c4 0/0
# Dice: c1 8/12 = 2/3, c2 6/8 = 3/4, c3 2/4 = 1/2, c4 0/0


def test_metaldam_matssl_paper_protocol():
    card = load_card("metaldam")
    spec = card.protocol("matssl-paper")
    # mean over {0, 1, 2, 4}, Defect's empty union counts 0, Precipitate ignored:
    # (2/3 + 1/2 + 3/5 + 0) / 4 = 53/120
    score = protocol_score(CM_DAM, spec, card.background)
    assert score == pytest.approx(float(F(53, 120)))
    # honest: all five classes, Defect NaN left out: (2/3 + 1/2 + 3/5 + 1/3) / 4 = 21/40
    assert protocol_score(CM_DAM, HONEST, card.background) == pytest.approx(21 / 40)
    assert summarize(CM_DAM, card.background).absent == [4]


def test_metaldam_pscl_paper_protocol_is_mean_foreground_dice():
    card = load_card("metaldam")
    # Dice over {1, 2, 3}, Defect NaN left out: (2/3 + 3/4 + 1/2) / 3 = 23/36
    expected = float(F(23, 36))
    assert protocol_score(CM_DAM, card.protocol("pscl-paper"), card.background) == pytest.approx(
        expected
    )
    assert summarize(CM_DAM, card.background).mdice_fg == pytest.approx(expected)


def test_ebc_matssl_paper_protocol_merges_and_counts_background():
    card = load_card("ebc1")
    # merged [[10, 3], [3, 11]]: IoU0 = 10/16 = 5/8, IoU1 = 11/17 -> (5/8 + 11/17)/2 = 173/272
    expected = float(F(173, 272))
    assert protocol_score(CM_EBC, card.protocol("matssl-paper"), card.background) == pytest.approx(
        expected
    )
    # the binary variant's masks are merged at load time: same number from its 2-class matrix
    binary = load_card("ebc1:binary")
    merged = np.array([[10, 3], [3, 11]])
    assert protocol_score(merged, binary.protocol("matssl-paper"), binary.background) == (
        pytest.approx(expected)
    )


def test_ebc_pscl_paper_protocol_is_foreground_dice_without_merging():
    card = load_card("ebc1")
    # Dice1 = 2*5/(2*5 + 3 + 3) = 5/8, Dice2 = 2*3/(2*3 + 3 + 3) = 1/2 -> 9/16
    score = protocol_score(CM_EBC, card.protocol("pscl-paper"), card.background)
    assert score == pytest.approx(9 / 16)


def test_protocol_rejects_averaging_a_merged_away_class():
    bad = ProtocolSpec(name="bad", merge=((2, 1),), classes=(0, 2))
    with pytest.raises(ValueError, match="merged-away"):
        protocol_score(CM_EBC, bad, background=0)
