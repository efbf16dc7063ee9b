"""Display tables: percentages, the separated-best mask, and escaping in every rendering."""

from __future__ import annotations

import math

import pandas as pd

from bench.reporting.stats import estimate
from bench.reporting.tables import (
    DisplayTable,
    latex_escape,
    pct,
    separated_best,
    to_html,
    to_latex,
    to_markdown,
)


def test_pct() -> None:
    assert pct(0.12345) == "12.35" and pct(0.5, digits=0) == "50"
    assert pct(0.0123, signed=True) == "+1.23" and pct(-0.01, signed=True) == "-1.00"
    assert pct(None) == pct(math.nan) == pct(math.inf) == "–"


def test_separated_best_bolds_only_a_best_whose_interval_clears_the_runner_up() -> None:
    low, mid, high = estimate([0.1, 0.12, 0.11]), estimate([0.3, 0.32, 0.31]), estimate([0.5])
    wide = estimate([0.2, 0.6, 0.4])  # best mean 0.40 but its CI overlaps mid's
    cells = pd.DataFrame(
        {
            "separated": [low, mid, None],
            "overlapping": [mid, wide, None],
            "tie": [mid, mid, low],
            "lone": [None, mid, None],
            "n=1 best": [low, high, None],  # no CI for the best: not separated
        },
        dtype=object,
    )
    bold = separated_best(cells)
    assert bold["separated"].tolist() == [False, True, False]
    assert not bold[["overlapping", "tie", "lone", "n=1 best"]].to_numpy().any()


def test_renderings_escape_user_text() -> None:
    cells = pd.DataFrame({"1 | shot": ["<b>1</b> & 50%"]}, index=pd.Index(["m_1"], name="method"))
    table = DisplayTable("t", "Title #1 & <x>", cells, note="100% {note}")
    md = to_markdown(table)
    assert "1 \\| shot" in md and "_100% {note}_" in md
    tex = to_latex(table)
    assert r"\textless" not in tex and r"m\_1" in tex and r"50\%" in tex and r"\#1 \&" in tex
    html = to_html(table)
    assert "&lt;b&gt;1&lt;/b&gt; &amp; 50%" in html and "<b>" not in html
    assert latex_escape("a_b ± 1 ≤ 2") == r"a\_b $\pm$ 1 $\le$ 2"
