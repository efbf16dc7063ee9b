"""Model inputs: grayscale micrographs become 3-channel tensors with ImageNet statistics.

Every network in the harness (pretraining views, fine-tuning crops, inference, the seed-style
reference loop) sees its input normalised by these constants, so pretraining and fine-tuning
agree on what a pixel value means.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_unit(x: torch.Tensor) -> torch.Tensor:
    """``B×1×H×W`` floats in 0..1 → ``B×3×H×W`` normalised with ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def normalize_uint8(gray: torch.Tensor) -> torch.Tensor:
    """uint8 ``B×H×W`` grayscale → float ``B×3×H×W`` with ImageNet statistics."""
    return normalize_unit(gray.float().div_(255.0).unsqueeze(1))
