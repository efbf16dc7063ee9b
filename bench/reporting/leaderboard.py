"""The leaderboard: for each dataset, protocol and profile, methods × shots tables of test scores.

Per section: the protocol's score (model selected on validation) as mean ± sample std over draws
with the best mean per column marked; the Student-t 95% CI of each mean; the oracle (best step on
test) beside the validation-selected score and their difference (optimism); the paired comparison
with the baseline (``bench.reporting.stats``); per-class IoU; and, in a table of their own,
numbers reported in the literature for the same dataset and protocol
(``bench.reporting.reported``). Values are stored as fractions and shown in % (differences in
percentage points). ``cells`` holds every number, tidy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from rich.rule import Rule

from bench.core.console import console
from bench.data.cards import DatasetCard
from bench.reporting.reported import reported_for, row_label
from bench.reporting.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    DEFAULT_BASELINES,
    Estimate,
    PairedComparison,
    estimate,
    paired_comparison,
    per_draw,
)
from bench.reporting.tables import (
    MISSING,
    DisplayTable,
    best_mask,
    latex_escape,
    pct,
    to_latex,
    to_markdown,
    to_rich,
)
from bench.results.frames import Results, card_for, shots_order

METHODS_NOTE = (
    "Scores in % on the test images. Each draw is one random choice of labeled training images "
    "(replicate seeds of a draw are averaged); mean ± sample standard deviation (n−1) over draws, "
    "n = number of draws. 95% CI of the mean: Student t, mean ± t(0.975, n−1)·s/√n. Best mean per "
    "column in bold (★ in the terminal). Oracle: the step with the best test score (optimistic); "
    "optimism = oracle − validation-selected. Paired comparison with the baseline on matching "
    "draws only (same dataset, split, shots, draw, profile; the others are listed as excluded): "
    f"mean difference in percentage points, paired bootstrap 95% CI ({BOOTSTRAP_RESAMPLES:,} "
    f"resamples, seed {BOOTSTRAP_SEED}) and two-sided Wilcoxon signed-rank p (exact for small n). "
    "Rows labelled 'reported, …' are numbers from the literature (results/reported.csv), not "
    "measured here: single published values under that paper's own training setup."
)
CELL_COLUMNS = (
    "dataset", "protocol", "profile", "kind", "method", "shots", "metric", "class_id", "class_name",
    "n", "mean", "std", "ci95_low", "ci95_high", "oracle_mean", "optimism", "baseline", "n_pairs",
    "diff_mean", "diff_ci95_low", "diff_ci95_high", "wilcoxon_p", "excluded", "source", "citation",
    "table", "note",
)  # fmt: skip


@dataclass(frozen=True)
class Section:
    """The tables of one (dataset, protocol, profile)."""

    dataset: str
    protocol: str
    profile: str
    description: str
    baseline: str | None
    tables: tuple[DisplayTable, ...]
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return f"{self.dataset} · {self.protocol} · profile {self.profile}"

    def table(self, key: str) -> DisplayTable | None:
        return next((t for t in self.tables if t.key == key), None)


@dataclass(frozen=True)
class Leaderboard:
    sections: tuple[Section, ...]
    cells: pd.DataFrame  # every number, one row per (section, method, shots[, class]); CSV
    store_url: str
    generated: datetime


def build_leaderboard(
    results: Results, reported: pd.DataFrame, baseline: str | None = None
) -> Leaderboard:
    """All sections of ``results``; ``baseline`` None picks imagenet, else scratch, per section."""
    sections: list[Section] = []
    rows: list[dict[str, object]] = []
    metrics = results.metrics
    groups = metrics.groupby(["dataset", "protocol", "profile"], sort=False)
    for key in sorted(groups.groups, key=lambda k: (k[0], k[1] != "honest", k[1], k[2])):
        section, section_rows = _section(groups.get_group(key), *key, reported, baseline)
        if section is not None:
            sections.append(section)
            rows += section_rows
    cells = pd.DataFrame(rows, columns=list(CELL_COLUMNS)).astype(
        {"class_id": "Int64", "n": "Int64", "n_pairs": "Int64"}
    )
    return Leaderboard(tuple(sections), cells, results.store_url, datetime.now(timezone.utc))


def write_leaderboard(board: Leaderboard, out_dir: Path) -> list[Path]:
    """``leaderboard.md``, ``.csv`` and ``.tex`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "leaderboard.md": markdown_document(board),
        "leaderboard.tex": latex_document(board),
    }
    written = []
    for name, text in files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
        written.append(out_dir / name)
    board.cells.to_csv(out_dir / "leaderboard.csv", index=False)
    return [*written, out_dir / "leaderboard.csv"]


def print_leaderboard(board: Leaderboard) -> None:
    for section in board.sections:
        console.print(Rule(section.title))
        if section.description:
            console.print(f"[dim]{section.description}[/]", highlight=False)
        for table in section.tables:
            console.print(to_rich(table))
        for note in section.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"[dim]{METHODS_NOTE}[/]", highlight=False)


def markdown_document(board: Leaderboard) -> str:
    parts = [
        "# MicroSSL-Bench leaderboard",
        "",
        f"Generated {board.generated:%Y-%m-%d %H:%M} UTC from `{board.store_url}`.",
        "",
        METHODS_NOTE,
    ]
    for section in board.sections:
        parts += ["", f"## {section.title}", ""]
        if section.description:
            parts += [f"Protocol: {section.description}.", ""]
        parts += [p for table in section.tables for p in (to_markdown(table), "")]
        parts += [f"> note: {note}" for note in section.notes]
    return "\n".join(parts).rstrip() + "\n"


def latex_document(board: Leaderboard) -> str:
    """A fragment to ``\\input``; needs ``\\usepackage{booktabs}``."""
    parts = [
        "% MicroSSL-Bench leaderboard; needs \\usepackage{booktabs}",
        f"% generated {board.generated:%Y-%m-%d %H:%M} UTC from {board.store_url}",
        latex_escape(METHODS_NOTE),
    ]
    for section in board.sections:
        parts += ["", rf"\subsection*{{{latex_escape(section.title)}}}"]
        parts += [to_latex(table) for table in section.tables]
        parts += [rf"\noindent Note: {latex_escape(note)}\par" for note in section.notes]
    return "\n".join(parts) + "\n"


def _section(
    frame: pd.DataFrame,
    dataset: str,
    protocol: str,
    profile: str,
    reported: pd.DataFrame,
    baseline_arg: str | None,
) -> tuple[Section | None, list[dict[str, object]]]:
    test = frame[frame.split_part == "test"]
    score = test[(test.selection == "val") & (test.metric == "score")]
    if score.empty:
        return None, []
    oracle = test[(test.selection == "oracle") & (test.metric == "score")]
    iou = test[(test.selection == "val") & (test.metric == "iou")]
    card = card_for(dataset)
    shots = shots_order(score.shots_label)
    labels = _row_order(score.label)
    baseline, notes = _pick_baseline(labels, baseline_arg)
    means = _estimates(score)
    oracles = _estimates(oracle)
    pairs = _comparisons(score, labels, shots, baseline)
    per_class = {int(c): _estimates(g) for c, g in iou.groupby("class_id")}
    names = _class_names(card, per_class)
    lit = reported_for(reported, dataset, protocol)
    base = {"dataset": dataset, "protocol": protocol, "profile": profile}

    rows = [
        _score_row(base, label, s, e, oracles.get((label, s)), baseline, pairs.get((label, s)))
        for (label, s), e in means.items()
    ]
    rows += [
        {
            **base,
            "kind": "measured",
            "method": label,
            "shots": s,
            "metric": "iou",
            "class_id": c,
            "class_name": names[c],
            **_estimate_cols(e),
        }
        for c, est in per_class.items()
        for (label, s), e in est.items()
    ]
    rows += [
        {
            **base,
            "kind": "reported",
            "method": r.method,
            "shots": r.shots,
            "metric": "score",
            "mean": r.value,
            "source": r.source,
            "citation": r.citation,
            "table": r.table,
            "note": r.note,
        }
        for r in lit.itertuples()
    ]

    tables = [
        _score_table(protocol, labels, shots, means),
        _ci_table(labels, shots, means),
        _optimism_table(labels, shots, means, oracles),
    ]
    if baseline is not None:
        tables.append(_paired_table(labels, shots, baseline, pairs))
    if per_class:
        tables.append(_per_class_table(labels, shots, per_class, names))
    if not lit.empty:
        tables.append(_reported_table(lit, shots))
    description = _description(card, protocol)
    return Section(
        dataset, protocol, profile, description, baseline, tuple(tables), tuple(notes)
    ), rows


def _estimates(frame: pd.DataFrame) -> dict[tuple[str, str], Estimate]:
    """Estimate per (label, shots label) over per-draw values."""
    if frame.empty:
        return {}
    draws = per_draw(frame, column="label").reset_index()
    return {
        (str(label), str(s)): estimate(g["value"])
        for (label, s), g in draws.groupby(["label", "shots_label"])
    }


def _comparisons(
    score: pd.DataFrame, labels: list[str], shots: list[str], baseline: str | None
) -> dict[tuple[str, str], PairedComparison]:
    if baseline is None:
        return {}
    out = {}
    for s in shots:
        at = score[score.shots_label == s]
        present = set(at.label)
        if baseline not in present:
            continue
        for label in labels:
            if label != baseline and label in present:
                out[(label, s)] = paired_comparison(at, label, baseline, column="label")
    return out


def _pick_baseline(labels: list[str], wanted: str | None) -> tuple[str | None, list[str]]:
    """The baseline row: ``wanted`` (a label or a method name), else imagenet, else scratch."""
    for name in (wanted,) if wanted else DEFAULT_BASELINES:
        if name in labels:
            return name, []
        variants = [label for label in labels if label.startswith(f"{name} (")]
        if variants:
            return variants[0], [
                f"baseline {name} has several variants; compared with {variants[0]}"
            ]
    if wanted:
        return None, [f"baseline '{wanted}' has no runs here: no paired comparison"]
    return None, [f"neither {' nor '.join(DEFAULT_BASELINES)} has runs here: no paired comparison"]


def _score_row(
    base: dict[str, object],
    label: str,
    shots: str,
    e: Estimate,
    oracle: Estimate | None,
    baseline: str | None,
    pair: PairedComparison | None,
) -> dict[str, object]:
    row: dict[str, object] = {
        **base,
        "kind": "measured",
        "method": label,
        "shots": shots,
        "metric": "score",
        **_estimate_cols(e),
    }
    if oracle is not None:
        row |= {"oracle_mean": oracle.mean, "optimism": oracle.mean - e.mean}
    if pair is not None:
        row |= {
            "baseline": baseline,
            "n_pairs": pair.n_pairs,
            "diff_mean": pair.mean_diff,
            "diff_ci95_low": pair.ci_low,
            "diff_ci95_high": pair.ci_high,
            "wilcoxon_p": pair.p_value,
            "excluded": "; ".join(x.describe() for x in pair.excluded),
        }
    return row


def _estimate_cols(e: Estimate) -> dict[str, object]:
    return {"n": e.n, "mean": e.mean, "std": e.std, "ci95_low": e.ci_low, "ci95_high": e.ci_high}


def _score_table(
    protocol: str, labels: list[str], shots: list[str], means: dict[tuple[str, str], Estimate]
) -> DisplayTable:
    cells = _grid(labels, shots, lambda lab, s: _mean_std(means.get((lab, s))))
    values = _grid(labels, shots, lambda lab, s: _mean_of(means.get((lab, s))), dtype=float)
    return DisplayTable(
        "score",
        f"{protocol} score (%), model selected on validation: mean ± std (n = draws)",
        cells,
        best_mask(values),
    )


def _ci_table(
    labels: list[str], shots: list[str], means: dict[tuple[str, str], Estimate]
) -> DisplayTable:
    def cell(label: str, s: str) -> str:
        e = means.get((label, s))
        if e is None:
            return MISSING
        if e.n < 2:
            return f"{MISSING} (n={e.n})"
        return f"[{pct(e.ci_low)}, {pct(e.ci_high)}] (n={e.n})"

    return DisplayTable(
        "ci", "95% confidence interval of the mean (Student t), %", _grid(labels, shots, cell)
    )


def _optimism_table(
    labels: list[str],
    shots: list[str],
    means: dict[tuple[str, str], Estimate],
    oracles: dict[tuple[str, str], Estimate],
) -> DisplayTable:
    def cell(label: str, s: str) -> str:
        e, o = means.get((label, s)), oracles.get((label, s))
        if e is None or o is None:
            return MISSING
        return f"{pct(e.mean)} → {pct(o.mean)} (Δ {pct(o.mean - e.mean, signed=True)}, n={o.n})"

    return DisplayTable(
        "optimism",
        "Validation-selected → oracle (best step on test) mean score, % (Δ = optimism)",
        _grid(labels, shots, cell),
        note="The oracle picks the step by its test score: an optimistic bound, not a result.",
    )


def _paired_table(
    labels: list[str],
    shots: list[str],
    baseline: str,
    pairs: dict[tuple[str, str], PairedComparison],
) -> DisplayTable:
    def cell(label: str, s: str) -> str:
        p = pairs.get((label, s))
        if p is None or p.n_pairs == 0:
            return MISSING
        ci = (
            ""
            if math.isnan(p.ci_low)
            else f" [{pct(p.ci_low, signed=True)}, {pct(p.ci_high, signed=True)}]"
        )
        return f"{pct(p.mean_diff, signed=True)}{ci}, p={p.p_value:.3g} (n={p.n_pairs} pairs)"

    others = [label for label in labels if label != baseline]
    excluded = [
        f"{label}, {_shots_header(s)}: {', '.join(x.describe() for x in p.excluded)}"
        for (label, s), p in pairs.items()
        if p.excluded
    ]
    note = (
        "Excluded draws (no match): " + "; ".join(excluded) if excluded else ("All draws matched.")
    )
    return DisplayTable(
        "paired",
        f"Difference from baseline {baseline}, percentage points: mean [bootstrap 95% CI], "
        "Wilcoxon p (matching draws only)",
        _grid(others, shots, cell),
        note=note,
    )


def _per_class_table(
    labels: list[str],
    shots: list[str],
    per_class: dict[int, dict[tuple[str, str], Estimate]],
    names: dict[int, str],
) -> DisplayTable:
    rows = [
        (label, s)
        for s in shots
        for label in labels
        if any((label, s) in est for est in per_class.values())
    ]
    index = pd.Index([f"{label}, {_shots_header(s)}" for label, s in rows], name="method, shots")
    columns = [names[c] for c in per_class]
    cells = pd.DataFrame(MISSING, index=index, columns=columns, dtype=object)
    values = pd.DataFrame(math.nan, index=index, columns=columns)
    for j, (_c, est) in enumerate(per_class.items()):
        for i, key in enumerate(rows):
            e = est.get(key)
            if e is not None and e.n:
                cells.iat[i, j] = f"{pct(e.mean, 1)} (n={e.n})"
                values.iat[i, j] = e.mean
    at_shots = [[key[1] == s for key in rows] for s in shots]  # best per class within a shots level
    bold = pd.concat([best_mask(values.loc[rows_at]) for rows_at in at_shots])
    return DisplayTable(
        "per_class",
        "Per-class IoU (%), model selected on validation: mean (n = "
        "draws); best per class and shots in bold",
        cells,
        bold,
    )


def _reported_table(lit: pd.DataFrame, shots: list[str]) -> DisplayTable:
    columns = [_shots_header(s) for s in shots_order([*shots, *lit.shots])]
    index = pd.Index([row_label(r.source, r.method) for r in lit.itertuples()], name="reported row")
    cells = pd.DataFrame(MISSING, index=index, columns=[*columns, "where"], dtype=object)
    for i, r in enumerate(lit.itertuples()):
        cells.iat[i, columns.index(_shots_header(r.shots))] = pct(r.value)
        cells.iat[i, len(columns)] = f"{r.table}; {r.note}" if r.note else r.table
    citations = "; ".join(
        f"{s}: {c}"
        for s, c in lit[["source", "citation"]].drop_duplicates().itertuples(index=False)
    )
    return DisplayTable(
        "reported",
        "Reported in the literature: not measured here, single published values, "
        "not comparable with the mean ± std rows",
        cells,
        note=f"Sources: {citations}.",
        reported=True,
    )


def _grid(
    labels: list[str], shots: list[str], fn: Callable[[str, str], object], dtype: type = object
) -> pd.DataFrame:
    frame = pd.DataFrame(
        [[fn(label, s) for s in shots] for label in labels],
        index=pd.Index(labels, name="method"),
        columns=[_shots_header(s) for s in shots],
    )
    return frame.astype(dtype)


def _mean_std(e: Estimate | None) -> str:
    if e is None or e.n == 0:
        return MISSING
    spread = f" ± {pct(e.std)}" if e.n > 1 else ""
    return f"{pct(e.mean)}{spread} (n={e.n})"


def _mean_of(e: Estimate | None) -> float:
    return e.mean if e is not None else math.nan


def _shots_header(shots: str) -> str:
    if shots == "all":
        return "all labeled"
    return f"{shots} shot" if shots == "1" else f"{shots} shots"


def _row_order(labels: pd.Series) -> list[str]:
    """Baselines first (scratch, imagenet), then the rest alphabetically."""
    rank = {name: i for i, name in enumerate(reversed(DEFAULT_BASELINES))}
    return sorted(pd.unique(labels), key=lambda lab: (rank.get(lab.split(" (")[0], 9), lab))


def _description(card: DatasetCard | None, protocol: str) -> str:
    if card is None or protocol not in ("honest", *card.protocols):
        return ""
    return card.protocol(protocol).description


def _class_names(card: DatasetCard | None, per_class: dict[int, dict]) -> dict[int, str]:
    names = dict(zip(card.class_ids, card.class_names, strict=True)) if card else {}
    return {c: names.get(c, f"class {c}") for c in per_class}
