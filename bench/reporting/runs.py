"""The terminal summary of ``bench run``: one row per draw and, over several draws, their mean."""

from __future__ import annotations

import math

from bench.core.console import console
from bench.reporting.stats import estimate
from bench.reporting.tables import pct
from bench.runner import RunOutcome


def print_outcomes(outcomes: list[RunOutcome]) -> None:
    """A rich table: one row per draw and a mean ± std row (with the number of draws)."""
    from rich.table import Table

    if not outcomes:
        return
    protocols = [k for k in outcomes[0].scores if k not in ("oracle", "val")]
    table = Table(title="Test scores (model selected on validation; oracle = best on test)")
    for col in ("method", "dataset", "shots", "draw", "status"):
        table.add_column(col, no_wrap=True)
    table.add_column("val mIoU", justify="right")
    for p in protocols:
        table.add_column(p, justify="right")
    table.add_column("oracle (honest)", justify="right")
    for o in outcomes:
        table.add_row(
            o.spec.method,
            o.spec.dataset,
            o.spec.shots,
            str(o.spec.draw),
            o.status,
            pct(o.scores.get("val")),
            *(pct(o.scores.get(p)) for p in protocols),
            pct(o.scores.get("oracle")),
        )
    if len(outcomes) > 1:
        cells = []
        for key in ("val", *protocols, "oracle"):
            e = estimate(o.scores.get(key, math.nan) for o in outcomes)
            cells.append(f"{pct(e.mean)} ± {pct(e.std)} (n={e.n})")
        table.add_row("mean ± std", "", "", "", "", *cells, style="bold")
    console.print(table)
    console.print(
        "Scores in %. val mIoU: the selected model on the validation images; honest = test "
        "mIoU over all classes at native resolution; the paper protocols are in README, "
        "'Metrics and named protocols'."
    )
