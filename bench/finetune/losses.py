"""Fine-tuning losses.

- ``ce+dice``: cross-entropy + smp's soft multiclass Dice (the harness default);
- ``dice``: smp's soft multiclass Dice over all classes, batch-aggregated (the MatSSL seed's
  ``DiceLoss(mode="multiclass")``);
- ``wce+fgdice``: 0.5 × class-weighted cross-entropy + 0.5 × soft Dice of the foreground
  classes per image, ``1 − 2 (Σpg + 1e-4) / (Σp + Σg + 1e-4)`` (the seed's formula as
  ``shared/reference/pscl.md`` §3 gives it), averaged over foreground classes and images (the
  PSCL seed's ``dice_bce_ratio = 0.5``, ``dice_weight = [0, 1, 1, 1]``).
"""

from __future__ import annotations

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import BenchError

LOSSES = ("ce+dice", "dice", "wce+fgdice")
DICE_SMOOTH = 1e-4
"""The PSCL seed's smoothing term of its per-image soft Dice."""


def make_loss(
    name: str,
    num_classes: int,
    background: int | None = None,
    class_weights: torch.Tensor | None = None,
) -> nn.Module:
    """The loss ``name``; ``wce+fgdice`` uses ``class_weights`` (default 1) and leaves the
    ``background`` class out of its Dice (None: every class is foreground)."""
    if name == "dice":
        return smp.losses.DiceLoss(mode="multiclass", from_logits=True)
    if name == "ce+dice":
        return _SumLoss(
            nn.CrossEntropyLoss(), smp.losses.DiceLoss(mode="multiclass", from_logits=True)
        )
    if name == "wce+fgdice":
        foreground = [c for c in range(num_classes) if c != background]
        return WeightedCEForegroundDice(class_weights, foreground)
    raise BenchError(f"unknown fine-tuning loss '{name}'; choose from {', '.join(LOSSES)}")


def rare_class_weights(
    masks: list[np.ndarray], num_classes: int, rare_share: float, rare_weight: float
) -> torch.Tensor:
    """Cross-entropy weights: ``rare_weight`` for classes below ``rare_share`` of the masks'
    pixels, 1 for the others. The PSCL seed's fixed [1, 1, 10, 10] weights its two rare
    aluminium phases; this rule gives any card's rare classes that weight."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for mask in masks:
        counts += np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
    share = counts / max(counts.sum(), 1.0)
    return torch.tensor(np.where(share < rare_share, rare_weight, 1.0), dtype=torch.float32)


class WeightedCEForegroundDice(nn.Module):
    """0.5 × weighted cross-entropy + 0.5 × mean foreground soft Dice per image (module doc)."""

    def __init__(self, class_weights: torch.Tensor | None, foreground: list[int]) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights)
        self.foreground = foreground

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = None if self.class_weights is None else self.class_weights.to(logits.device)
        ce = F.cross_entropy(logits, target, weight=weights)
        prob = logits.softmax(dim=1)[:, self.foreground]
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, self.foreground]
        onehot = onehot.to(prob.dtype)
        inter = (prob * onehot).sum(dim=(2, 3))
        total = prob.sum(dim=(2, 3)) + onehot.sum(dim=(2, 3))
        dice = 1 - 2 * (inter + DICE_SMOOTH) / (total + DICE_SMOOTH)
        return 0.5 * ce + 0.5 * dice.mean()


class _SumLoss(nn.Module):
    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)
