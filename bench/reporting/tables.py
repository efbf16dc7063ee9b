"""Formatted tables and their renderings: Markdown, LaTeX (booktabs), HTML and rich.

A ``DisplayTable`` holds display strings (``cells``: rows × columns, the index names the rows) and
a mask of cells to emphasise (a column's best mean, where it is separated from the
runner-up): bold in Markdown, LaTeX and HTML, ★ in
the terminal. Literature rows live in their own tables (``reported=True``), styled apart.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # pandas loads with the first frame: `bench run`'s table needs none
    import pandas as pd

MISSING = "–"
LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "−": r"$-$", "→": r"$\to$", "Δ": r"$\Delta$", "·": r"$\cdot$", "–": "--",
    "≤": r"$\le$", "≥": r"$\ge$", "√": r"$\surd$", "×": r"$\times$", "…": r"\dots{}",
    "★": r"$\star$",
}  # fmt: skip


@dataclass(frozen=True)
class DisplayTable:
    """A titled table of display strings; ``bold`` marks emphasised cells (same shape)."""

    key: str
    title: str
    cells: pd.DataFrame
    bold: pd.DataFrame | None = None
    note: str = ""
    reported: bool = False

    def is_bold(self, row: int, col: int) -> bool:
        return self.bold is not None and bool(self.bold.iat[row, col])


def pct(value: float | None, digits: int = 2, signed: bool = False) -> str:
    """A fraction as a percentage string (``–`` for missing/NaN)."""
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{100 * value:+.{digits}f}" if signed else f"{100 * value:.{digits}f}"


class Summary(Protocol):
    """What ``separated_best`` reads of a cell's estimate."""

    mean: float
    ci_low: float
    ci_high: float


def separated_best(estimates: pd.DataFrame) -> pd.DataFrame:
    """True where a cell holds its column's best mean *and* is separated from the runner-up.

    ``estimates`` holds an estimate (mean, ci_low, ci_high) or None/NaN per cell. Separated: the
    best's 95% CI lies entirely above the runner-up's (both CIs defined, so n ≥ 2 each). A lone
    cell, a tie or overlapping intervals mark nothing: the best is not separated.
    """
    import pandas as pd

    bold = pd.DataFrame(False, index=estimates.index, columns=estimates.columns)
    for j in range(estimates.shape[1]):
        found = [
            (e.mean, i)
            for i, e in enumerate(estimates.iloc[:, j])
            if hasattr(e, "mean") and math.isfinite(e.mean)
        ]
        if len(found) < 2:
            continue
        found.sort(reverse=True)
        best, runner = estimates.iat[found[0][1], j], estimates.iat[found[1][1], j]
        if best.ci_low > runner.ci_high:  # NaN compares False: undefined CIs never separate
            bold.iat[found[0][1], j] = True
    return bold


def to_markdown(table: DisplayTable) -> str:
    head = [table.cells.index.name or "", *map(str, table.cells.columns)]
    rule = "|" + "|".join(["---", *["---:"] * (len(head) - 1)]) + "|"
    lines = [f"**{table.title}**", "", _md_row(head), rule]
    for i, (label, row) in enumerate(table.cells.iterrows()):
        cells = [f"**{c}**" if table.is_bold(i, j) else c for j, c in enumerate(row)]
        lines.append(_md_row([f"_{label}_" if table.reported else str(label), *cells]))
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines)


def to_latex(table: DisplayTable) -> str:
    cols = "l" + "r" * len(table.cells.columns)
    head = " & ".join(
        latex_escape(str(c)) for c in [table.cells.index.name or "", *table.cells.columns]
    )
    lines = [
        r"\begin{table}[!htbp]",
        r"\centering\small",
        rf"\caption{{{latex_escape(table.title)}}}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        head + r" \\",
        r"\midrule",
    ]
    for i, (label, row) in enumerate(table.cells.iterrows()):
        cells = [
            rf"\textbf{{{latex_escape(c)}}}" if table.is_bold(i, j) else latex_escape(c)
            for j, c in enumerate(row)
        ]
        first = (
            rf"\textit{{{latex_escape(str(label))}}}"
            if table.reported
            else latex_escape(str(label))
        )
        lines.append(" & ".join([first, *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.note:
        lines.append(rf"\par\smallskip\footnotesize {latex_escape(table.note)}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


def to_html(table: DisplayTable) -> str:
    kind = "reported" if table.reported else "measured"
    head = "".join(
        f"<th>{html.escape(str(c))}</th>"
        for c in [table.cells.index.name or "", *table.cells.columns]
    )
    body = []
    for i, (label, row) in enumerate(table.cells.iterrows()):
        cells = "".join(
            f'<td class="best"><strong>{html.escape(c)}</strong></td>'
            if table.is_bold(i, j)
            else f"<td>{html.escape(c)}</td>"
            for j, c in enumerate(row)
        )
        body.append(f'<tr><th scope="row">{html.escape(str(label))}</th>{cells}</tr>')
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (
        f'<figure class="table {kind}" data-table="{html.escape(table.key)}">'
        f"<figcaption>{html.escape(table.title)}</figcaption>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"{note}</figure>"
    )


def to_rich(table: DisplayTable) -> Table:
    style = "italic dim" if table.reported else None
    out = Table(
        title=escape(table.title),
        caption=escape(table.note) or None,
        caption_justify="left",
        style=style,
    )
    out.add_column(table.cells.index.name or "", style="italic" if table.reported else "bold")
    for col in table.cells.columns:
        out.add_column(str(col), justify="right")
    for i, (label, row) in enumerate(table.cells.iterrows()):
        out.add_row(
            escape(str(label)),
            *[
                f"[bold]★ {escape(c)}[/]" if table.is_bold(i, j) else escape(c)
                for j, c in enumerate(row)
            ],
        )
    return out


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
