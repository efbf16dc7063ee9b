"""Numerical precision of the networks: the one rule behind ``--precision auto|fp32|bf16``.

- ``fp32``: every op in float32, default (contiguous) memory format.
- ``bf16``: the networks' forward passes under ``torch.autocast(<device>, dtype=bfloat16)``, with
  the model and its 4-D inputs in ``channels_last`` (the layout oneDNN's and cuDNN's bf16
  convolution kernels want). Weights, gradients and optimizer state stay float32 (autocast casts
  per op; it is not a bf16 model).
- ``auto``: ``bf16`` where the device runs it fast — CUDA with native bf16
  (``torch.cuda.is_bf16_supported(including_emulation=False)``), a CPU with bf16 matrix or vector
  units (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``; elsewhere torch's own cpuinfo
  probe) — else ``fp32``. Detected, never guessed from the CPU's name.

What stays float32 under ``bf16``: losses and their logits (callers cast network outputs with
``.float()`` before the loss; NT-Xent and InfoNCE similarities go through ``fp32_matmul``),
softmax, argmax over logits, confusion matrices and every metric. The resolved precision is
recorded with every run, in its config hash and in the pretraining cache key.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.core.errors import BenchError

PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""``/proc/cpuinfo`` flags of CPU units oneDNN uses for bf16 (AMX tiles first, then AVX-512)."""


@dataclass(frozen=True)
class Precision:
    """A resolved precision (``fp32`` or ``bf16``) on one device type, and why it was chosen."""

    name: str
    device_type: str
    reason: str = ""

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self) -> AbstractContextManager[None]:
        """The forward-pass context: bf16 autocast, or autocast switched off (``fp32``)."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)

    def model(self, module: nn.Module) -> nn.Module:
        """``module`` in the memory format of this precision (channels_last for bf16)."""
        return module.to(memory_format=torch.channels_last) if self.bf16 else module

    def frozen(self, module: nn.Module) -> nn.Module:
        """A frozen ``module`` (no gradients) with its convolution and linear weights and biases
        stored in bf16 under ``bf16``: what autocast casts them to on every pass, made once
        (autocast caches its casts only for weights that require gradients). Equal outputs under
        autocast; call it only there. ``fp32``: unchanged."""
        if self.bf16:
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d | nn.Linear):
                    for param in layer.parameters(recurse=False):
                        param.data = param.data.to(torch.bfloat16)
        return module

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-D network input in the memory format of this precision."""
        if self.bf16 and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def record(self) -> dict[str, str]:
        """What a run record and the pretraining cache key keep."""
        return {"precision": self.name, "reason": self.reason}


def precision_list(text: str, allowed: tuple[str, ...] = PRECISIONS) -> tuple[str, ...]:
    """The names of a comma list such as ``fp32,bf16``; a ValueError naming the choices when it
    is empty or names one outside ``allowed``."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names or any(name not in allowed for name in names):
        raise ValueError(f"a comma list of {', '.join(allowed)}")
    return names


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``--precision name`` on ``device``; ``bf16`` on a GPU without bf16 is a BenchError (a CPU
    without bf16 units runs it correctly but emulated, slower than fp32)."""
    if name not in PRECISIONS:
        raise BenchError(f"--precision {name}: choose one of {', '.join(PRECISIONS)}")
    kind = device.type
    if name == "fp32":
        return Precision("fp32", kind, "requested")
    fast, why = bf16_support(device)
    if name == "bf16":
        if kind == "cuda" and not fast:
            raise BenchError(f"--precision bf16: {why}; use --precision fp32 or auto")
        return Precision("bf16", kind, "requested" + ("" if fast else f" ({why}: emulated)"))
    return Precision("bf16" if fast else "fp32", kind, f"auto: {why}")


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 fast, and the evidence."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(device)} has native bf16"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "cpu":
        units = cpu_bf16_units()
        if units:
            return True, f"CPU has {units}"
        return False, "CPU has neither amx_bf16 nor avx512_bf16"
    return False, f"bf16 autocast is not used on {device.type}"


@functools.cache
def cpu_bf16_units() -> str | None:
    """The CPU's bf16 units (``"amx_bf16"``, ``"avx512_bf16"``) or None: the flags of
    ``/proc/cpuinfo``; where it cannot be read, torch's cpuinfo probe."""
    flags = cpuinfo_flags(Path("/proc/cpuinfo"))
    if flags is None:
        probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
        flags = {flag for flag, fn in probes.items() if getattr(torch.cpu, fn, lambda: False)()}
    return next((flag for flag in CPU_BF16_FLAGS if flag in flags), None)


def cpuinfo_flags(path: Path) -> set[str] | None:
    """The flags every CPU of a ``/proc/cpuinfo``-style file has (None: unreadable/no flags)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    per_cpu = [
        set(line.split(":", 1)[1].split())
        for line in text.splitlines()
        if line.split(":", 1)[0].strip() == "flags" and ":" in line
    ]
    return set.intersection(*per_cpu) if per_cpu else None


def fp32_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x`` L2-normalised along ``dim`` in float32 whatever its dtype: CPU autocast would run the
    normalisation and its backward (a difference of near-equal terms) in the input's bf16."""
    return torch.nn.functional.normalize(x.float(), dim=dim)


def fp32_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float32 even under autocast: similarity logits of contrastive losses."""
    with torch.autocast(a.device.type, enabled=False):
        return a.float() @ b.float()
