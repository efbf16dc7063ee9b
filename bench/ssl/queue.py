"""A queue of past keys with the image id of each, for MoCo-style negatives (DenseCL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeyQueue(nn.Module):
    """``size`` L2-normalised keys of dimension ``dim`` and their image ids (−1: never filled).

    Starts as random unit vectors (as the MoCo/DenseCL reference code); ``push`` overwrites the
    oldest entries. Keys, ids and the write position are buffers, so checkpoints keep them.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor, ids: torch.Tensor) -> None:
        size, n = self.keys.shape[0], keys.shape[0]
        slots = (self.ptr + torch.arange(n, device=self.keys.device)) % size
        self.keys[slots] = keys.detach().to(self.keys.dtype)
        self.ids[slots] = ids.to(self.ids.device)
        self.ptr.copy_((self.ptr + n) % size)
