"""The controls' paired test: exact sign-flip p-values and the t-interval, by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.controls.paired import paired_test


def test_all_positive_draws_give_the_exact_floor() -> None:
    t = paired_test([0.6] * 3 + [0.7] * 5, [0.5] * 8)
    assert t.p_value == pytest.approx(2 / 2**8)  # only all-plus and all-minus are as extreme
    assert t.wins == 8 and t.significant


def test_p_value_counts_sign_patterns_by_hand() -> None:
    diffs = np.array([0.05, -0.01, 0.03, 0.02, 0.04, -0.02])
    observed = abs(diffs.mean())
    extreme = sum(
        abs((diffs * np.array(signs)).mean()) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=diffs.size)
    )
    t = paired_test(diffs + 0.5, np.full(diffs.size, 0.5))
    assert t.p_value == pytest.approx(extreme / 2**diffs.size)
    assert t.wins == 4


def test_interval_is_students_t_of_the_differences() -> None:
    diffs = np.array([0.1, 0.3, -0.1, 0.2])
    t = paired_test(diffs, np.zeros(4))
    half = sps.t.ppf(0.975, 3) * diffs.std(ddof=1) / math.sqrt(4)
    assert t.mean_diff == pytest.approx(0.125)
    assert (t.ci_low, t.ci_high) == pytest.approx((0.125 - half, 0.125 + half))


def test_bad_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match=r"2\.\.20 draws"):
        paired_test([0.1], [0.2])
    with pytest.raises(ValueError, match="finite"):
        paired_test([0.1, math.nan], [0.2, 0.3])
