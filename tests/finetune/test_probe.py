"""The frozen-encoder probe: recalibrated statistics, a linear head, selection on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.data.cards import load_card
from bench.data.sources import load_labeled
from bench.finetune.probe import (
    LinearProbe,
    ProbeConfig,
    Standardizer,
    cell_targets,
    probe,
    recalibrated,
    stage_features,
)
from bench.models.encoders import build_encoder
from bench.models.inputs import normalize_uint8

CPU = torch.device("cpu")
TINY = ProbeConfig(steps=20, eval_every=10)


@pytest.fixture(scope="module")
def synthetic():
    card = load_card("synthetic")
    pick = lambda part, n: load_labeled(card, Path("."), [f"{part}_{i:03d}" for i in range(n)])  # noqa: E731
    return card, pick("train", 2), pick("val", 3), pick("test", 3)


def test_statistics_are_the_shots_and_the_encoder_is_frozen(synthetic) -> None:
    _, shots, _, _ = synthetic
    torch.manual_seed(0)
    encoder = build_encoder("resnet18")
    frozen = recalibrated(encoder, shots, CPU)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert any(p.requires_grad for p in encoder.parameters())  # the original is untouched
    # bn1 normalises conv1's output: its statistics are averaged over both shots (one pass each)
    with torch.no_grad():
        out = [frozen.conv1(normalize_uint8(torch.from_numpy(s.image)[None])) for s in shots]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in out]).mean(0)
    torch.testing.assert_close(frozen.bn1.running_mean, mean, rtol=1e-4, atol=1e-5)
    assert not torch.equal(frozen.bn1.running_var, torch.ones_like(frozen.bn1.running_var))


def test_the_head_is_one_linear_classifier_over_concatenated_upsampled_features() -> None:
    torch.manual_seed(0)
    features = [torch.randn(1, c, 32 // s, 32 // s) for c, s in ((4, 1), (6, 2), (8, 4), (10, 8))]
    head = LinearProbe([4, 6, 8, 10], num_classes=3)
    up = [F.interpolate(f, size=(32, 32), mode="bilinear", align_corners=False) for f in features]
    weight = torch.cat([h.weight for h in head.heads], dim=1)  # 3×28×1×1
    bias = sum(h.bias for h in head.heads)
    expected = F.conv2d(torch.cat(up, dim=1), weight, bias)
    torch.testing.assert_close(head(features), expected, rtol=1e-5, atol=1e-5)


def test_standardizer_uses_the_shots_statistics() -> None:
    torch.manual_seed(0)
    shots = [[torch.randn(1, 2, 4, 4) * 3 + 5 for _ in range(4)] for _ in range(2)]
    out = Standardizer(shots)(shots[0])
    both = torch.cat([shots[0][0].flatten(2), shots[1][0].flatten(2)], dim=2)
    expected = (shots[0][0] - both.mean(2)[..., None, None]) / (both.std(2)[..., None, None] + 1e-5)
    torch.testing.assert_close(out[0], expected)


def test_cell_targets_are_class_area_fractions() -> None:
    mask = np.array([[0, 0, 1, 1], [0, 2, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]], dtype=np.uint8)
    t = cell_targets(mask, (2, 2), 3)[0]
    assert t[:, 0, 0].tolist() == [0.75, 0.0, 0.25] and t[:, 0, 1].tolist() == [0.0, 1.0, 0.0]
    assert t[:, 1, 0].tolist() == [0.0, 0.0, 1.0]
    torch.testing.assert_close(t.sum(0), torch.ones(2, 2))


def test_selection_reads_validation_only(synthetic) -> None:
    card, shots, val, test = synthetic
    encoder = build_encoder("resnet18")
    a = probe(encoder, shots, val, test, card, "card", TINY, CPU, seed=0)
    b = probe(encoder, shots, val, list(reversed(test))[:2], card, "card", TINY, CPU, seed=0)
    assert [e.step for e in a.evals] == [10, 20]
    assert a.selected.step == b.selected.step  # another test set, the same selected step
    assert [e.val_score for e in a.evals] == [e.val_score for e in b.evals]
    assert a.losses[-1] < a.losses[0]
    assert set(a.selected.test) == {p.name for p in card.all_protocols()}


def test_features_are_the_four_stages() -> None:
    frozen = recalibrated(build_encoder("resnet18"), [], CPU)
    maps = stage_features(frozen, np.zeros((64, 96), dtype=np.uint8), CPU)
    assert [tuple(m.shape) for m in maps] == [
        (1, 64, 16, 24), (1, 128, 8, 12), (1, 256, 4, 6), (1, 512, 2, 3)
    ]  # fmt: skip
