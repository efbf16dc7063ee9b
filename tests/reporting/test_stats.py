"""bench.reporting.stats: Student-t estimates, paired comparisons on matching draws only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.reporting.stats import (
    ExcludedDraw,
    bootstrap_mean_ci,
    default_baseline,
    estimate,
    paired_comparison,
    wilcoxon_p,
)

T_975_DF3 = 3.182446305284263  # Student t 0.975 quantile, 3 degrees of freedom (tables)


def rows(
    method: str, values: dict[int, float], split: str = "fold0", **extra: object
) -> list[dict]:
    return [
        {
            "method": method,
            "dataset": "metaldam",
            "split": split,
            "shots_label": "1",
            "draw": draw,
            "profile": "quick",
            "value": value,
            **extra,
        }
        for draw, value in values.items()
    ]


def test_estimate_matches_hand_computation():
    values = [0.50, 0.52, 0.48, 0.54]
    mean = (0.50 + 0.52 + 0.48 + 0.54) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    e = estimate(values)
    assert e.n == 4
    assert e.mean == pytest.approx(0.51)
    assert e.std == pytest.approx(std)
    assert e.ci_low == pytest.approx(mean - T_975_DF3 * std / 2)
    assert e.ci_high == pytest.approx(mean + T_975_DF3 * std / 2)


def test_estimate_ignores_nan_and_has_no_spread_for_one_value():
    assert estimate([0.4, math.nan, None, 0.6]).n == 2
    one = estimate([0.7])
    assert (one.mean, one.n) == (0.7, 1)
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    assert estimate([]).n == 0 and math.isnan(estimate([]).mean)


def test_paired_comparison_uses_matching_draws_only():
    frame = pd.DataFrame(
        rows(
            "simclr", {0: 0.60, 1: 0.62, 2: 0.57, 3: 0.66, 4: 0.70, 5: 0.99}
        )  # draw 5: no baseline
        + rows("imagenet", {0: 0.55, 1: 0.58, 2: 0.50, 3: 0.60, 4: 0.61, 6: 0.10})  # 6: no simclr
        + rows("imagenet", {0: 0.0}, split="fold1")  # same draw number, other split: no match
        + rows("scratch", {0: 0.3})  # neither side
    )
    result = paired_comparison(frame, "simclr", "imagenet")
    assert result.n_pairs == 5
    diffs = [0.05, 0.04, 0.07, 0.06, 0.09]
    assert result.mean_diff == pytest.approx(sum(diffs) / 5)
    assert result.p_value == pytest.approx(2 / 2**5)  # exact: all 5 differences positive
    assert set(result.excluded) == {
        ExcludedDraw("metaldam", "fold0", "1", 5, "quick", missing="imagenet"),
        ExcludedDraw("metaldam", "fold0", "1", 6, "quick", missing="simclr"),
        ExcludedDraw("metaldam", "fold1", "1", 0, "quick", missing="simclr"),
    }
    assert result.ci_low <= result.mean_diff <= result.ci_high
    assert min(diffs) <= result.ci_low and result.ci_high <= max(diffs)


def test_paired_comparison_averages_replicate_seeds_of_a_draw():
    frame = pd.DataFrame(
        rows("a", {0: 0.6, 1: 0.7}) + rows("a", {0: 0.8}) + rows("b", {0: 0.5, 1: 0.5})
    )
    result = paired_comparison(frame, "a", "b")
    assert result.n_pairs == 2
    assert result.mean_diff == pytest.approx(((0.7 - 0.5) + (0.7 - 0.5)) / 2)


def test_paired_comparison_without_common_draws():
    frame = pd.DataFrame(rows("a", {0: 0.6}) + rows("b", {1: 0.5}))
    result = paired_comparison(frame, "a", "b")
    assert result.n_pairs == 0
    assert math.isnan(result.mean_diff) and math.isnan(result.p_value)
    assert len(result.excluded) == 2
    assert paired_comparison(frame, "a", "nobody").n_pairs == 0


def test_bootstrap_is_seeded_and_deterministic():
    diffs = np.array([0.01, 0.05, -0.02, 0.04, 0.03, 0.00, 0.06])
    assert bootstrap_mean_ci(diffs, seed=3) == bootstrap_mean_ci(diffs, seed=3)
    low, high = bootstrap_mean_ci(diffs)
    assert low < diffs.mean() < high
    assert bootstrap_mean_ci(np.array([0.02, 0.02, 0.02])) == pytest.approx((0.02, 0.02))
    assert all(math.isnan(v) for v in bootstrap_mean_ci(np.array([0.1])))


def test_wilcoxon_edge_cases():
    assert wilcoxon_p(np.zeros(4)) == 1.0
    assert math.isnan(wilcoxon_p(np.array([])))
    # exact null for n=3: W- = 2 (rank of -0.2); P(W <= 2) = 3/8 (sums 0, 1, 2 of 8), two-sided 0.75
    assert wilcoxon_p(np.array([0.1, -0.2, 0.3])) == pytest.approx(0.75)


def test_default_baseline():
    assert default_baseline(["simclr", "scratch", "imagenet"]) == "imagenet"
    assert default_baseline(["simclr", "scratch"]) == "scratch"
    assert default_baseline(["simclr"]) is None
