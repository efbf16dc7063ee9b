"""Learning-rate schedules shared by pretraining and fine-tuning (``LambdaLR`` factors)."""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("cosine", "constant")


def warmup_then(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup over ``warmup_steps``, then cosine to 0 at ``total_steps`` (or constant)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / span))

    return factor
