"""Summary statistics over draws and paired comparisons of a method against a baseline.

- ``estimate``: mean, sample standard deviation (n−1), n and the 95% confidence interval of the
  mean from Student's t distribution: mean ± t(0.975, n−1)·s/√n (NaN for n < 2).
- ``paired_comparison``: a method against a baseline on matching draws only (same dataset, split,
  shots, draw and profile); draws that only one side has are excluded and listed. Gives the
  two-sided Wilcoxon signed-rank p-value (scipy ``method="auto"``: the exact null distribution for
  n ≤ 50 distinct nonzero differences, exhaustive permutations for n ≤ 13 with ties or zeros) and a
  seeded, deterministic paired-bootstrap 95% percentile interval of the mean difference.

Values are whatever the caller passes (fractions in this project); NaN values are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

PAIR_KEYS = ("dataset", "split", "shots_label", "draw", "profile")
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
DEFAULT_BASELINES = ("imagenet", "scratch")


@dataclass(frozen=True)
class Estimate:
    """Mean ± sample std over ``n`` finite values, with the Student-t CI of the mean."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ExcludedDraw:
    """A draw left out of a paired comparison because the method named ``missing`` lacks it."""

    dataset: str
    split: str
    shots_label: str
    draw: int
    profile: str
    missing: str

    def describe(self) -> str:
        return f"{self.split}/draw {self.draw} (no {self.missing} run)"


@dataclass(frozen=True)
class PairedComparison:
    """``method`` minus ``baseline`` over ``n_pairs`` matching draws."""

    method: str
    baseline: str
    n_pairs: int
    mean_diff: float
    ci_low: float  # paired bootstrap percentile interval of the mean difference
    ci_high: float
    p_value: float  # two-sided Wilcoxon signed-rank
    excluded: tuple[ExcludedDraw, ...]


def estimate(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, sample std, n and the Student-t confidence interval of the mean over finite values."""
    x = _finite(values)
    n = x.size
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Estimate(mean, std, n, mean - half, mean + half)


def per_draw(frame: pd.DataFrame, column: str = "method", value: str = "value") -> pd.Series:
    """Mean ``value`` per (``column``, *PAIR_KEYS*): replicate runs of one draw count once."""
    finite = frame[np.isfinite(frame[value].astype(float))]
    return finite.groupby([column, *PAIR_KEYS], sort=True, observed=True)[value].mean()


def paired_comparison(
    frame: pd.DataFrame,
    method: str,
    baseline: str,
    *,
    column: str = "method",
    value: str = "value",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> PairedComparison:
    """Compare ``method`` with ``baseline`` (rows of ``frame`` whose ``column`` names them).

    ``frame`` holds one value per run and the *PAIR_KEYS* columns; replicates of a draw are
    averaged first (``per_draw``).
    """
    draws = per_draw(frame[frame[column].isin([method, baseline])], column, value)
    ours = _side(draws, method)
    theirs = _side(draws, baseline)
    common = ours.index.intersection(theirs.index).sort_values()
    excluded = sorted(
        (
            ExcludedDraw(str(dataset), str(split), str(shots), int(draw), str(profile), missing)
            for missing, keys in (
                (baseline, ours.index.difference(theirs.index)),
                (method, theirs.index.difference(ours.index)),
            )
            for dataset, split, shots, draw, profile in keys
        ),
        key=lambda e: (e.split, e.draw, e.missing),
    )
    diffs = (ours.loc[common] - theirs.loc[common]).to_numpy(dtype=float)
    low, high = bootstrap_mean_ci(diffs, resamples, seed, confidence)
    return PairedComparison(
        method=method,
        baseline=baseline,
        n_pairs=diffs.size,
        mean_diff=float(diffs.mean()) if diffs.size else math.nan,
        ci_low=low,
        ci_high=high,
        p_value=wilcoxon_p(diffs),
        excluded=tuple(excluded),
    )


def wilcoxon_p(diffs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (1.0 if all are zero)."""
    if diffs.size == 0:
        return math.nan
    if not np.any(diffs):
        return 1.0
    return float(sps.wilcoxon(diffs, alternative="two-sided", method="auto").pvalue)


def bootstrap_mean_ci(
    diffs: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile interval of the mean of ``diffs`` resampled with replacement (NaN for n < 2)."""
    if diffs.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(resamples, diffs.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def default_baseline(methods: Iterable[str]) -> str | None:
    """``imagenet`` if it has runs, else ``scratch``, else None."""
    present = set(methods)
    return next((name for name in DEFAULT_BASELINES if name in present), None)


def _side(draws: pd.Series, name: str) -> pd.Series:
    if name not in draws.index.get_level_values(0):
        return draws.iloc[:0].droplevel(0)
    return draws.xs(name, level=0)


def _finite(values: Iterable[float]) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return x[np.isfinite(x)]
