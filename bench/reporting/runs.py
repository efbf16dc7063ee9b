"""The terminal summary of ``bench run``: per shots level, one row per draw and evaluation mode,
the mean and spread over draws, what each score column means, and the per-class IoU.

Laid out for an 80-column terminal: the method, dataset and shots go in the title, and every score
is a bare percentage, so no cell is ever cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import groupby

from rich import box
from rich.table import Table
from rich.text import Text

from bench.core.console import console
from bench.data.cards import DatasetCard, load_card
from bench.reporting.stats import estimate
from bench.reporting.tables import pct
from bench.results.store import ResultStore
from bench.runner import RunOutcome

MODE_NOTE = {
    "finetune": "every weight trained from the method's encoder",
    "probe": "encoder frozen, a linear head trained on its features",
}


def print_outcomes(outcomes: Sequence[RunOutcome], store: ResultStore | None = None) -> None:
    """One table per (method, dataset, split, shots), the column legend, and per-class IoU."""
    if not outcomes:
        return
    for _, group in groupby(
        outcomes, key=lambda o: (o.spec.method, o.spec.dataset, o.spec.split, o.spec.shots)
    ):
        runs = list(group)
        card = load_card(runs[0].spec.dataset)
        protocols = [spec.name for spec in card.all_protocols() if spec.name != "honest"]
        console.print(_score_table(runs, protocols))
        if store is not None:
            classes = _class_table(runs, card, store)
            if classes is not None:
                console.print(classes)
    _print_legend(load_card(outcomes[0].spec.dataset))


def _score_table(runs: list[RunOutcome], protocols: list[str]) -> Table:
    spec = runs[0].spec
    split = f" {spec.split}" if spec.split else ""
    table = Table(
        title=Text(f"{spec.method} · {spec.dataset}{split} · {spec.shots}-shot · test scores in %"),
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    keys = ["val", "honest", *protocols, "oracle"]
    table.add_column("draw", no_wrap=True)
    table.add_column("mode", no_wrap=True)
    for key in keys:
        table.add_column(key, justify="right", no_wrap=True)
    modes = [m for m in ("finetune", "probe") if any(_scores(o, m) for o in runs)]
    for o in runs:
        if o.status == "failed":
            table.add_row(str(o.spec.draw), "", Text(f"failed: {o.error or ''}"[:60]))
            continue
        for mode in modes:
            scores = _scores(o, mode)
            table.add_row(str(o.spec.draw), mode, *(pct(scores.get(k)) for k in keys))
    if len(runs) > 1:
        for mode in modes:
            stats = [estimate(_scores(o, mode).get(k, math.nan) for o in runs) for k in keys]
            n = max(e.n for e in stats)
            table.add_row(f"mean n={n}", mode, *(pct(e.mean) for e in stats), style="bold")
            table.add_row("± std", mode, *(pct(e.std) for e in stats))
    return table


def _scores(outcome: RunOutcome, mode: str) -> dict[str, float]:
    return outcome.scores if mode == "finetune" else outcome.probe


def _class_table(runs: list[RunOutcome], card: DatasetCard, store: ResultStore) -> Table | None:
    """Mean test IoU per class (honest protocol, validation-selected step), per mode."""
    ids = [o.run_id for o in runs if o.run_id is not None and o.status != "failed"]
    if not ids:
        return None
    frame = store.metrics_frame(metric="iou", protocol="honest", selection="val", split_part="test")
    frame = frame[frame.run_id.isin(ids)]
    if frame.empty:
        return None
    table = Table(
        title=Text(f"per-class test IoU in % (honest, mean of {len(ids)} draw(s))"),
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    table.add_column("class", no_wrap=True)
    modes = [m for m in ("finetune", "probe") if (frame["mode"] == m).any()]
    for mode in modes:
        table.add_column(mode, justify="right", no_wrap=True)
    means = frame.groupby(["mode", "class_id"]).value.mean()
    for info in card.classes:
        table.add_row(
            Text(info.name), *(pct(means.get((mode, info.id), math.nan)) for mode in modes)
        )
    return table


def _print_legend(card: DatasetCard) -> None:
    lines = [
        "val     validation mIoU of the selected step (the model is chosen on validation only)",
        "honest  mIoU over all classes at native resolution (a class absent from the test "
        "images and never predicted is left out)",
    ]
    for spec in card.all_protocols():
        if spec.name != "honest":
            lines.append(f"{spec.name}  {spec.description}")
    lines += [
        "oracle  honest mIoU at the step best on test: optimistic, never a result",
        *(f"{mode}  {note}" for mode, note in MODE_NOTE.items()),
        "See README 'Metrics and named protocols' and 'Evaluation modes'.",
    ]
    for line in lines:
        console.print(Text(line, style="dim"))
