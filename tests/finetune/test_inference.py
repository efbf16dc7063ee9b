"""Class ids from logits: the fast path gives exactly argmax's answer."""

from __future__ import annotations

import torch

from bench.finetune.inference import class_ids


def test_class_ids_equal_argmax_with_ties_and_nan() -> None:
    torch.manual_seed(0)
    tied = torch.randint(0, 3, (2, 5, 64, 96)).float()  # most pixels have tied maxima
    assert torch.equal(class_ids(tied), tied.argmax(1))
    noisy = torch.randn(1, 5, 64, 96)
    noisy[0, 2, 0, 0] = noisy[0, 4, 0, 1] = float("nan")
    assert torch.equal(class_ids(noisy), noisy.argmax(1))
    assert class_ids(noisy)[0, 0, 0] == 2 and class_ids(noisy)[0, 0, 1] == 4
