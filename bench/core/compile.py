"""When ``torch.compile`` is used: the one rule behind ``--compile auto|on|off``.

``on`` always compiles, ``off`` never. ``auto`` compiles on CUDA only where the warm-up (about a
minute) pays off: a stage of at least ``AUTO_MIN_STEPS[stage]`` optimizer steps.
"""

from __future__ import annotations

import torch

COMPILE_MODES = ("auto", "on", "off")
AUTO_MIN_STEPS = {"pretrain": 2000, "finetune": 500}


def should_compile(mode: str, stage: str, steps: int, device: torch.device) -> bool:
    """Whether ``--compile mode`` compiles a ``stage`` (pretrain/finetune) of ``steps`` steps."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "auto":
        return device.type == "cuda" and steps >= AUTO_MIN_STEPS[stage]
    return mode == "on"
