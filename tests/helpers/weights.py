"""A stand-in for torchvision's ImageNet checkpoint: random ResNet weights under a name whose
digits are the file's own SHA-256 prefix, as the real files are named."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch
import torchvision

from bench.models import imagenet


def fake_imagenet_weights(
    folder: Path, monkeypatch: pytest.MonkeyPatch, encoder: str = "resnet18"
) -> Path:
    """Write the checkpoint into ``folder`` and make the weights table name it; returns its path."""
    buffer = io.BytesIO()
    torch.save(getattr(torchvision.models, encoder)(weights=None).state_dict(), buffer)
    data = buffer.getvalue()
    name = f"{encoder}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    monkeypatch.setattr(imagenet, "TORCHVISION_WEIGHTS", {encoder: name})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name
