"""The paired test of a control: per-draw differences (treated minus random init) over n draws.

- **p-value**: the exact two-sided sign-flip permutation test of "the mean difference is 0":
  under the null each difference is as likely positive as negative, so all 2^n sign patterns are
  enumerated (``scipy.stats.permutation_test``, ``permutation_type="samples"`` on the paired
  samples, ``n_resamples=inf``) and p is the share of patterns whose mean is at least as far from 0
  as the observed one. Its floor is 2/2^n (0.0625 at n = 5, 0.0078 at n = 8).
- **Interval**: the 95% Student-t confidence interval of the mean difference
  (``bench.reporting.stats.estimate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from bench.reporting.stats import CONFIDENCE, estimate

MAX_EXACT_DRAWS = 20
"""2^20 sign patterns at most (about a million; seconds)."""


@dataclass(frozen=True)
class PairedTest:
    """Mean of the paired differences, its t-interval and the exact sign-flip p-value."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    wins: int
    """Draws where the treated encoder scored higher than random init."""

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - CONFIDENCE


def paired_test(treated: Sequence[float], baseline: Sequence[float]) -> PairedTest:
    """``treated − baseline`` draw by draw (same order, same draws)."""
    a, b = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal lengths, got {a.shape} and {b.shape}")
    n = a.size
    if not 2 <= n <= MAX_EXACT_DRAWS:
        raise ValueError(f"the exact sign-flip test needs 2..{MAX_EXACT_DRAWS} draws, got {n}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired samples must be finite")
    diffs = a - b
    est = estimate(diffs)
    if np.all(diffs == 0):
        p = 1.0
    else:
        result = sps.permutation_test(
            (a, b),
            _mean_difference,
            permutation_type="samples",
            vectorized=True,
            n_resamples=math.inf,
            alternative="two-sided",
        )
        p = float(result.pvalue)
    return PairedTest(n, est.mean, est.ci_low, est.ci_high, p, int((diffs > 0).sum()))


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)
