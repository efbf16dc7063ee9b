"""Display tables: percentages, the best-mean mask, and escaping in every rendering."""

from __future__ import annotations

import math

import pandas as pd

from bench.reporting.tables import (
    DisplayTable,
    best_mask,
    latex_escape,
    pct,
    to_html,
    to_latex,
    to_markdown,
)


def test_pct() -> None:
    assert pct(0.12345) == "12.35" and pct(0.5, digits=0) == "50"
    assert pct(0.0123, signed=True) == "+1.23" and pct(-0.01, signed=True) == "-1.00"
    assert pct(None) == pct(math.nan) == pct(math.inf) == "–"


def test_best_mask_marks_ties_and_skips_nan() -> None:
    means = pd.DataFrame({"1 shot": [0.2, 0.3, 0.3], "4 shots": [math.nan, 0.1, 0.05]})
    mask = best_mask(means)
    assert mask["1 shot"].tolist() == [False, True, True]
    assert mask["4 shots"].tolist() == [False, True, False]


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
