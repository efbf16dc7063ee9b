"""Summary statistics over draws and paired comparisons of a method against a baseline.

- ``estimate``: mean, sample standard deviation (n−1), n and the 95% confidence interval of the
  mean from Student's t distribution: mean ± t(0.975, n−1)·s/√n (NaN for n < 2).
- ``paired_comparison``: a method against a baseline on matching draws only (same dataset, split,
  shots, draw, profile, pool and evaluation mode); draws only one side has, or where one side's
  run failed (NaN score), are excluded and listed. The per-draw differences are rounded to
  ``DIFF_DECIMALS`` decimals (far below the precision shown) so that float noise makes neither a
  tie two ranks nor a zero a sign. On them: the Student-t 95% CI of the mean difference, the exact
  two-sided sign-flip permutation p over all 2ⁿ sign patterns (smallest possible value
  2/2ⁿ⁽ⁿᵒⁿᶻᵉʳᵒ⁾, stated beside it), the minimum detectable effect at 80% power (paired t-test,
  α = 0.05, the observed spread), and a paired bootstrap percentile interval only from
  ``BOOTSTRAP_MIN_N`` pairs, where its coverage is within 2 points of 95% (the coverage
  simulation in ``tests/reporting/test_stats.py``: about 76% at n = 3, 85% at 5, 90% at 10,
  92–94% at 30).
- ``holm``: Holm's step-down adjustment of the p-values of one table (family-wise error).

Values are whatever the caller passes (fractions in this project); NaN values are failed runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas and scipy load when a function needs them: `bench run` prints a table
    import pandas as pd

PAIR_KEYS = ("dataset", "split", "shots_label", "draw", "profile", "pool", "mode")
CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.80
DIFF_DECIMALS = 6  # differences are fractions: 1e-6 = 0.0001 percentage points
MIN_PAIRS = 3  # fewer pairs: no interval, no test, no detectable effect (said in the cell)
EXACT_MAX_N = 20  # sign-flip p by full enumeration up to 2^20 patterns, else Monte Carlo
MONTE_CARLO_PATTERNS = 200_000
BOOTSTRAP_MIN_N = 50
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
DEFAULT_BASELINES = ("imagenet", "scratch")


@dataclass(frozen=True)
class Estimate:
    """Mean ± sample std over ``n`` finite values, with the Student-t CI of the mean.

    ``failed`` counts the NaN values (failed runs) left out.
    """

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float
    failed: int = 0


@dataclass(frozen=True)
class ExcludedDraw:
    """A draw left out of a paired comparison: ``missing`` has no run there, or it failed."""

    dataset: str
    split: str
    shots_label: str
    draw: int
    profile: str
    missing: str
    failed: bool = False

    def describe(self) -> str:
        why = f"{self.missing} run failed (NaN score)" if self.failed else f"no {self.missing} run"
        return f"{self.split}/draw {self.draw} ({why})"


@dataclass(frozen=True)
class PairedComparison:
    """``method`` minus ``baseline`` over ``n_pairs`` matching draws (differences rounded)."""

    method: str
    baseline: str
    diffs: tuple[float, ...]
    draws: tuple[str, ...]  # "split/draw" of each difference
    t_low: float  # Student-t CI of the mean difference (NaN below MIN_PAIRS)
    t_high: float
    p_value: float  # exact two-sided sign-flip permutation p (NaN below MIN_PAIRS)
    p_floor: float  # the smallest p the test can give at this n
    mde: float  # smallest mean difference detectable at 80% power (NaN below MIN_PAIRS)
    boot_low: float  # bootstrap percentile CI, only from BOOTSTRAP_MIN_N pairs
    boot_high: float
    excluded: tuple[ExcludedDraw, ...]

    @property
    def n_pairs(self) -> int:
        return len(self.diffs)

    @property
    def mean_diff(self) -> float:
        return float(np.mean(self.diffs)) if self.diffs else math.nan

    @property
    def can_reach_alpha(self) -> bool:
        """Whether the test could give p < 0.05 at this n at all."""
        return self.p_floor < ALPHA


def estimate(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, sample std, n and the Student-t confidence interval of the mean over finite values."""
    raw = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    x = raw[np.isfinite(raw)]
    failed = int(raw.size - x.size)
    n = x.size
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan, failed)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, 1, math.nan, math.nan, failed)
    low, high = t_interval(x, confidence)
    return Estimate(mean, float(x.std(ddof=1)), n, low, high, failed)


def t_interval(x: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean of ``x`` (NaN for n < 2)."""
    n = x.size
    if n < 2:
        return math.nan, math.nan
    from scipy import stats as sps

    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return float(x.mean()) - half, float(x.mean()) + half


def per_draw(frame: pd.DataFrame, column: str = "method", value: str = "value") -> pd.Series:
    """Mean ``value`` per (``column``, pairing keys): replicate runs of one draw count once.

    A draw whose runs all failed (NaN) keeps a NaN value, so it is shown as failed, not absent.
    """
    keys = [column, *(k for k in PAIR_KEYS if k in frame.columns)]
    values = frame.assign(**{value: frame[value].astype(float)})
    return values.groupby(keys, sort=True, observed=True, dropna=False)[value].mean()


def paired_comparison(
    frame: pd.DataFrame,
    method: str,
    baseline: str,
    *,
    column: str = "method",
    value: str = "value",
    confidence: float = CONFIDENCE,
) -> PairedComparison:
    """Compare ``method`` with ``baseline`` (rows of ``frame`` whose ``column`` names them).

    ``frame`` holds one value per run and the pairing columns; replicates of a draw are averaged
    first (``per_draw``).
    """
    draws = per_draw(frame[frame[column].isin([method, baseline])], column, value)
    ours, theirs = _side(draws, method), _side(draws, baseline)
    both = ours.index.intersection(theirs.index).sort_values()
    failed_ours = both[~np.isfinite(ours.loc[both].to_numpy(dtype=float))]
    failed_theirs = both[~np.isfinite(theirs.loc[both].to_numpy(dtype=float))]
    common = both.difference(failed_ours.union(failed_theirs))
    excluded = sorted(
        (
            _excluded(key, ours.index.names, missing, failed)
            for missing, failed, keys in (
                (baseline, False, ours.index.difference(theirs.index)),
                (method, False, theirs.index.difference(ours.index)),
                (method, True, failed_ours),
                (baseline, True, failed_theirs),
            )
            for key in keys
        ),
        key=lambda e: (e.split, e.draw, e.missing),
    )
    diffs = np.round((ours.loc[common] - theirs.loc[common]).to_numpy(dtype=float), DIFF_DECIMALS)
    names = list(ours.index.names)
    labels = tuple(f"{key[names.index('split')]}/draw {key[names.index('draw')]}" for key in common)
    enough = diffs.size >= MIN_PAIRS
    low, high = t_interval(diffs, confidence) if enough else (math.nan, math.nan)
    boot = (
        bootstrap_mean_ci(diffs, confidence=confidence)
        if diffs.size >= BOOTSTRAP_MIN_N
        else (math.nan, math.nan)
    )
    return PairedComparison(
        method=method,
        baseline=baseline,
        diffs=tuple(float(d) for d in diffs),
        draws=labels,
        t_low=low,
        t_high=high,
        p_value=sign_flip_p(diffs) if enough else math.nan,
        p_floor=sign_flip_floor(diffs),
        mde=min_detectable_effect(diffs) if enough else math.nan,
        boot_low=boot[0],
        boot_high=boot[1],
        excluded=tuple(excluded),
    )


def sign_flip_p(diffs: np.ndarray, seed: int = BOOTSTRAP_SEED) -> float:
    """Exact two-sided sign-flip permutation p of the mean of paired differences.

    Under the null each difference is as likely negative as positive: p is the share of the 2ⁿ
    sign patterns whose |sum| is at least the observed |sum| (zeros flip to themselves). Exact
    by enumeration up to ``EXACT_MAX_N`` differences, else a seeded Monte Carlo estimate (the
    observed pattern counted). Differences should be rounded first (``DIFF_DECIMALS``).
    """
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return math.nan
    if not np.any(d):
        return 1.0
    scale = 10.0**DIFF_DECIMALS
    units = np.round(d * scale).astype(np.int64)  # integer sums: ties compare exactly
    observed = abs(int(units.sum()))
    if units.size <= EXACT_MAX_N:
        sums = np.zeros(1, dtype=np.int64)
        for u in units:
            sums = np.concatenate([sums + u, sums - u])
        return float(np.count_nonzero(np.abs(sums) >= observed) / sums.size)
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1, 1], dtype=np.int64), size=(MONTE_CARLO_PATTERNS, units.size))
    hits = int(np.count_nonzero(np.abs(signs @ units) >= observed))
    return (hits + 1) / (MONTE_CARLO_PATTERNS + 1)


def sign_flip_floor(diffs: np.ndarray | Sequence[float]) -> float:
    """The smallest two-sided p the sign-flip test can give: 2 / 2^(nonzero differences)."""
    nonzero = int(np.count_nonzero(np.asarray(diffs, dtype=float)))
    return min(1.0, 2.0 / 2.0**nonzero)


def min_detectable_effect(diffs: np.ndarray, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest |mean difference| a two-sided paired t-test at ``alpha`` detects with ``power``.

    Uses the observed standard deviation of ``diffs`` and the noncentral t distribution; NaN for
    fewer than two differences, 0 when they do not vary.
    """
    n = int(np.asarray(diffs).size)
    if n < 2:
        return math.nan
    sd = float(np.std(diffs, ddof=1))
    if sd == 0:
        return 0.0
    df = n - 1
    from scipy import optimize
    from scipy import stats as sps

    crit = float(sps.t.ppf(1 - alpha / 2, df))

    def shortfall(effect: float) -> float:
        nc = effect * math.sqrt(n) / sd
        upper = float(sps.nct.sf(crit, df, nc))
        lower = float(np.nan_to_num(sps.nct.cdf(-crit, df, nc)))  # NaN far in the tail: ~0
        return upper + lower - power

    high = sd
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-10 * sd))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(p_values, dtype=float)
    finite = np.flatnonzero(np.isfinite(p))
    out = np.full(p.size, math.nan)
    m = finite.size
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def bootstrap_mean_ci(
    diffs: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile interval of the mean of ``diffs`` resampled with replacement (NaN for n < 2).

    Undercovers at small n (see the module docstring): shown only from ``BOOTSTRAP_MIN_N``.
    """
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


def _excluded(key: tuple, names: Sequence[str], missing: str, failed: bool) -> ExcludedDraw:
    at = dict(zip(names, key, strict=True))
    return ExcludedDraw(
        str(at["dataset"]),
        str(at["split"]),
        str(at["shots_label"]),
        int(at["draw"]),
        str(at["profile"]),
        missing,
        failed,
    )
