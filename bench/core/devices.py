"""Compute devices: resolving ``--device``, and naming a device for records and tables."""

from __future__ import annotations

import torch

from bench.core.cpus import cpu_count, cpu_model
from bench.core.errors import BenchError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a BenchError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {name}: CUDA is not available on this machine")
    return device


def fused_optimizer(device: torch.device) -> bool:
    """Whether optimizers on ``device`` take ``fused=True`` (one kernel per step for all
    parameters): CUDA, and CPU (torch ≥ 2.4). On a 2-core CPU an AdamW step of a U-Net/ResNet-18
    takes 53 ms fused against 132 ms with foreach (1 thread), and the weights agree to float
    rounding (3e-8 after 11 steps)."""
    return device.type in ("cuda", "cpu")


def device_name(device: torch.device) -> str:
    """Short name stored with every run: the GPU's name, or ``cpu``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def describe_device(device: torch.device) -> str:
    """Long name for benchmark records: the GPU's name, or ``cpu (N cores, model)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_count()} cores, {cpu_model()})"
