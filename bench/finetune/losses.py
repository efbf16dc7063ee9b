"""Fine-tuning losses (smp's soft Dice, cross-entropy, their sum)."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from bench.core.errors import BenchError

LOSSES = ("ce+dice", "dice")


def make_loss(name: str, num_classes: int) -> nn.Module:
    dice = smp.losses.DiceLoss(mode="multiclass", from_logits=True)
    if name == "dice":
        return dice
    if name == "ce+dice":
        ce = nn.CrossEntropyLoss()
        return _SumLoss(ce, dice)
    raise BenchError(f"unknown fine-tuning loss '{name}'; choose 'ce+dice' or 'dice'")


class _SumLoss(nn.Module):
    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)
