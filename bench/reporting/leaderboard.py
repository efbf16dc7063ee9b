"""The leaderboard: per dataset, split, SSL pool, protocol and profile, methods × shots tables.

A cell is never shared by two splits, two pool modes or two evaluation modes: fine-tune and
frozen-encoder probe are columns side by side; several splits of a dataset are combined only on
request (``aggregate_splits``), and then the differences stay paired within each split (splits as
blocks: a draw of fold 0 is compared only with the same draw of fold 0), n = splits × draws.

Per section: the protocol's score (model selected on validation) as mean ± sample std over
distinct draws; the Student-t 95% CI of each mean; the oracle (best step on test) beside the
validation-selected score (optimism); the paired comparison with the baseline
(``bench.reporting.stats``): every per-draw difference, the t-interval of their mean, the exact
sign-flip p with its floor, the Holm-adjusted p and the minimum detectable effect; the per-class
values of the protocol's own metric; and, in a table of their own, numbers reported in the
literature (``bench.reporting.reported``). Values are stored as fractions and shown in %
(differences in percentage points). ``cells`` holds every number, tidy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from rich.markup import escape
from rich.rule import Rule
from rich.text import Text

from bench.core.console import console
from bench.data.cards import DatasetCard
from bench.reporting.reported import reported_for, row_label
from bench.reporting.stats import (
    ALPHA,
    BOOTSTRAP_MIN_N,
    DEFAULT_BASELINES,
    DIFF_DECIMALS,
    MIN_PAIRS,
    Estimate,
    PairedComparison,
    estimate,
    holm,
    paired_comparison,
    per_draw,
)
from bench.reporting.tables import (
    MISSING,
    DisplayTable,
    latex_escape,
    pct,
    separated_best,
    to_latex,
    to_markdown,
    to_rich,
)
from bench.results.frames import Results, card_for, repeated_draws, shots_order, shots_text

MODES = {"finetune": "fine-tune", "probe": "probe"}
METRIC_NAMES = {"iou": "mIoU", "dice": "mean Dice"}
CLASS_METRIC_NAMES = {"iou": "IoU", "dice": "Dice"}
METHODS_NOTE = (
    "Scores in % on the test images. Each draw is one random choice of labeled training images; "
    "draws with the same images count once, and replicate seeds of a draw are averaged. Mean ± "
    "sample standard deviation (n−1) over draws, n = number of distinct draws. 95% CI of the "
    "mean: Student t, mean ± t(0.975, n−1)·s/√n; scores are bounded by 0 and 100 %, so an "
    "interval that passes a bound (marked †) is unreliable, not clipped. A cell is one split, "
    "one SSL pool mode (honest: near-duplicates of evaluation images excluded; transductive: "
    "kept) and one evaluation mode (fine-tune: every weight trained; probe: frozen encoder, a "
    "linear head). A run whose score is NaN is counted as failed, never dropped. Bold (★ in the "
    "terminal) marks a column's best mean only where its 95% CI lies above the runner-up's "
    "(non-overlapping intervals); where the intervals overlap nothing is bold: the best is not "
    "separated from the next. Oracle: the step with the best test score (optimistic); optimism = "
    "oracle − validation-selected. Paired comparison with the baseline on matching draws only "
    "(same split, shots, draw, pool and mode; the others are listed as excluded): every "
    f"difference in percentage points (rounded to {DIFF_DECIMALS} decimals of a fraction before "
    "testing, so float noise makes no tie or zero distinct), their mean, its Student-t 95% CI, "
    "the exact two-sided sign-flip permutation p over all 2ⁿ sign patterns (its smallest "
    "possible value is 2/2ⁿ: 0.25 at n = 3, 0.0625 at n = 5, so no test of 5 or fewer pairs "
    f"can give p < {ALPHA}), the Holm-adjusted p over every comparison of that table, and the "
    "minimum detectable effect (MDE): the smallest mean difference a paired t-test at 0.05 "
    "would detect with 80% power given n and the observed spread, so 'no difference found' "
    f"reads 'none larger than the MDE'. Fewer than {MIN_PAIRS} pairs: no interval, test or MDE. "
    "The paired bootstrap CI undercovers at these n (about 76% at n = 3, 90% at n = 10, in the "
    f"test suite's simulation) and is given (CSV only) from {BOOTSTRAP_MIN_N} pairs. Rows "
    "labelled 'reported, …' are numbers from the literature (results/reported.csv), not "
    "measured here: single published values under that paper's own training setup."
)
CELL_COLUMNS = (
    "dataset", "split", "pool", "mode", "protocol", "profile", "kind", "method", "shots", "metric",
    "metric_name", "class_id", "class_name", "n", "n_failed", "mean", "std", "ci95_low",
    "ci95_high", "best", "oracle_mean", "optimism", "baseline", "n_pairs", "pair_draws",
    "pair_diffs", "diff_mean", "diff_t95_low", "diff_t95_high", "signflip_p", "signflip_p_floor",
    "holm_p", "mde80", "diff_boot95_low", "diff_boot95_high", "excluded", "source", "citation",
    "table", "note",
)  # fmt: skip

Column = tuple[str, str]  # (shots label, evaluation mode)


@dataclass(frozen=True)
class Section:
    """The tables of one (dataset, split, pool, protocol, profile)."""

    dataset: str
    split: str
    pool: str
    protocol: str
    profile: str
    description: str
    baseline: str | None
    tables: tuple[DisplayTable, ...]
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return (
            f"{self.dataset} · split {self.split} · pool {self.pool} · {self.protocol} · "
            f"profile {self.profile}"
        )

    def table(self, key: str) -> DisplayTable | None:
        return next((t for t in self.tables if t.key == key), None)


@dataclass(frozen=True)
class Leaderboard:
    sections: tuple[Section, ...]
    cells: pd.DataFrame  # every number, one row per (section, method, shots, mode[, class]); CSV
    store_url: str
    generated: datetime
    commits: tuple[str, ...] = ()
    """The harness commits the runs come from (``-dirty``: uncommitted changes)."""


SECTION_KEYS = ("dataset", "split_group", "pool", "protocol", "profile")


def build_leaderboard(
    results: Results,
    reported: pd.DataFrame,
    baseline: str | None = None,
    aggregate_splits: bool = False,
) -> Leaderboard:
    """All sections of ``results``; ``baseline`` None picks imagenet, else scratch, per section.

    ``aggregate_splits`` puts every split of a dataset in one section (paired within split).
    """
    sections: list[Section] = []
    rows: list[dict[str, object]] = []
    metrics = with_split_groups(results.metrics, aggregate_splits)
    groups = metrics.groupby(list(SECTION_KEYS), sort=False)
    order = sorted(groups.groups, key=lambda k: (k[0], k[1], k[2], k[3] != "honest", k[3], k[4]))
    for key in order:
        section, section_rows = _section(groups.get_group(key), *key, reported, baseline)
        if section is not None:
            repeats = repeated_draws(_runs_of(results.runs, groups.get_group(key)))
            if repeats:
                section = _with_note(
                    section,
                    "draws with the same shot images are counted once: " + "; ".join(repeats),
                )
            sections.append(section)
            rows += section_rows
    cells = pd.DataFrame(rows, columns=list(CELL_COLUMNS)).astype(
        {"class_id": "Int64", "n": "Int64", "n_failed": "Int64", "n_pairs": "Int64"}
    )
    commits = tuple(sorted(results.runs["git_commit"].fillna("unknown").unique()))
    return Leaderboard(
        tuple(sections), cells, results.store_url, datetime.now(timezone.utc), commits
    )


def provenance_line(commits: tuple[str, ...]) -> str:
    """Which harness commits the runs come from, and whether any had uncommitted changes."""
    if not commits:
        return "no runs."
    dirty = [c for c in commits if c.endswith("-dirty") or c == "unknown"]
    shown = ", ".join(f"`{c[:12]}{'-dirty' if c.endswith('-dirty') else ''}`" for c in commits)
    if len(commits) == 1 and not dirty:
        return f"every run from one clean commit, {shown}."
    return (
        f"runs from {len(commits)} commit(s), {shown}"
        + (f"; {len(dirty)} with uncommitted changes or unknown" if dirty else "")
        + ": regenerate from one clean commit before publishing."
    )


def with_split_groups(metrics: pd.DataFrame, aggregate_splits: bool) -> pd.DataFrame:
    """``split_group``: the split, or with ``aggregate_splits`` all of a dataset's splits."""
    if not aggregate_splits:
        return metrics.assign(split_group=metrics["split"])
    joined = metrics.groupby("dataset")["split"].transform(lambda s: "+".join(sorted(pd.unique(s))))
    return metrics.assign(split_group=joined)


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
        console.print(Rule(Text(section.title)))
        if section.description:
            console.print(f"[dim]{escape(section.description)}[/]", highlight=False)
        for table in section.tables:
            console.print(to_rich(table))
        for note in section.notes:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    console.print(f"[dim]{escape(METHODS_NOTE)}[/]", highlight=False)


def markdown_document(board: Leaderboard) -> str:
    parts = [
        "# MicroSSL-Bench leaderboard",
        "",
        f"Generated {board.generated:%Y-%m-%d %H:%M} UTC from `{board.store_url}`; "
        f"{provenance_line(board.commits)}",
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
    split: str,
    pool: str,
    protocol: str,
    profile: str,
    reported: pd.DataFrame,
    baseline_arg: str | None,
) -> tuple[Section | None, list[dict[str, object]]]:
    test = frame[frame.split_part == "test"]
    score = test[(test.selection == "val") & (test.metric == "score")]
    if score.empty:
        return None, []
    card = card_for(dataset)
    class_metric = _class_metric(card, protocol)
    oracle = test[(test.selection == "oracle") & (test.metric == "score")]
    per_class_rows = test[(test.selection == "val") & (test.metric == class_metric)]
    columns = _columns(score)
    labels = _row_order(score.label)
    baseline, notes = _pick_baseline(labels, baseline_arg)
    means = _estimates(score)
    oracles = _estimates(oracle)
    pairs = _comparisons(score, labels, columns, baseline)
    adjusted = dict(zip(pairs, holm([p.p_value for p in pairs.values()]), strict=True))
    per_class = {int(c): _estimates(g) for c, g in per_class_rows.groupby("class_id")}
    names = _class_names(card, per_class)
    lit = reported_for(reported, dataset, protocol)
    metric_name = METRIC_NAMES.get(_metric(card, protocol), "score")
    multi = len({mode for _, mode in columns}) > 1
    scores = _score_table(protocol, metric_name, labels, columns, means, multi)
    base: dict[str, object] = {
        "dataset": dataset,
        "split": split,
        "pool": pool,
        "protocol": protocol,
        "profile": profile,
    }

    rows = [
        _score_row(
            base,
            label,
            (s, mode),
            e,
            metric_name,
            bool(scores.bold is not None and scores.bold.loc[label, _header((s, mode), multi)]),
            oracles.get((label, s, mode)),
            baseline,
            pairs.get((label, s, mode)),
            adjusted.get((label, s, mode), math.nan),
        )
        for (label, s, mode), e in means.items()
    ]
    rows += [
        {
            **base,
            "kind": "measured",
            "method": label,
            "shots": s,
            "mode": mode,
            "metric": class_metric,
            "metric_name": CLASS_METRIC_NAMES.get(class_metric, class_metric),
            "class_id": c,
            "class_name": names[c],
            **_estimate_cols(e),
        }
        for c, est in per_class.items()
        for (label, s, mode), e in est.items()
    ]
    rows += [
        {
            **base,
            "kind": "reported",
            "method": r.method,
            "shots": r.shots,
            "metric": "score",
            "metric_name": metric_name,
            "mean": r.value,
            "source": r.source,
            "citation": r.citation,
            "table": r.table,
            "note": r.note,
        }
        for r in lit.itertuples()
    ]

    tables = [
        scores,
        _ci_table(labels, columns, means, multi),
        _optimism_table(labels, columns, means, oracles, multi),
    ]
    if baseline is not None and pairs:
        tables.append(_paired_table(baseline, columns, pairs, adjusted, multi))
    if per_class:
        tables.append(
            _per_class_table(protocol, class_metric, labels, columns, per_class, names, multi)
        )
    if not lit.empty:
        tables.append(_reported_table(lit, [s for s, _ in columns]))
    if "+" in split:
        notes.append(
            f"splits {split.replace('+', ', ')} aggregated on request: means over every "
            "split's draws (n = splits × draws); paired differences within each split "
            "(splits as blocks)"
        )
    description = _description(card, protocol)
    return Section(
        dataset, split, pool, protocol, profile, description, baseline, tuple(tables), tuple(notes)
    ), rows


def _columns(score: pd.DataFrame) -> list[Column]:
    """(shots, mode) pairs present: shots ascending, fine-tune before probe at each."""
    known = list(MODES)
    modes = sorted(
        pd.unique(score["mode"]), key=lambda m: (known.index(m) if m in known else len(known), m)
    )
    present = set(zip(score.shots_label, score["mode"], strict=True))
    return [(s, m) for s in shots_order(score.shots_label) for m in modes if (s, m) in present]


def _header(col: Column, multi: bool) -> str:
    shots, mode = col
    return f"{shots_text(shots)} · {MODES.get(mode, mode)}" if multi else shots_text(shots)


def _estimates(frame: pd.DataFrame) -> dict[tuple[str, str, str], Estimate]:
    """Estimate per (label, shots label, mode) over per-draw values (failed draws counted)."""
    if frame.empty:
        return {}
    draws = per_draw(frame, column="label").reset_index()
    return {
        (str(label), str(s), str(mode)): estimate(g["value"])
        for (label, s, mode), g in draws.groupby(["label", "shots_label", "mode"])
    }


def _comparisons(
    score: pd.DataFrame, labels: list[str], columns: list[Column], baseline: str | None
) -> dict[tuple[str, str, str], PairedComparison]:
    if baseline is None:
        return {}
    out = {}
    for s, mode in columns:
        at = score[(score.shots_label == s) & (score["mode"] == mode)]
        present = set(at.label)
        if baseline not in present:
            continue
        for label in labels:
            if label != baseline and label in present:
                out[(label, s, mode)] = paired_comparison(at, label, baseline, column="label")
    return out


def _pick_baseline(labels: list[str], wanted: str | None) -> tuple[str | None, list[str]]:
    """The baseline row: ``wanted`` (a label or a method name), else imagenet, else scratch."""
    for name in (wanted,) if wanted else DEFAULT_BASELINES:
        if name in labels:
            return name, []
        variants = [label for label in labels if label.startswith((f"{name} (", f"{name} ·"))]
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
    col: Column,
    e: Estimate,
    metric_name: str,
    best: bool,
    oracle: Estimate | None,
    baseline: str | None,
    pair: PairedComparison | None,
    holm_p: float,
) -> dict[str, object]:
    row: dict[str, object] = {
        **base,
        "kind": "measured",
        "method": label,
        "shots": col[0],
        "mode": col[1],
        "metric": "score",
        "metric_name": metric_name,
        "best": best,
        **_estimate_cols(e),
    }
    if oracle is not None:
        row |= {"oracle_mean": oracle.mean, "optimism": oracle.mean - e.mean}
    if pair is not None:
        row |= {
            "baseline": baseline,
            "n_pairs": pair.n_pairs,
            "pair_draws": "; ".join(pair.draws),
            "pair_diffs": "; ".join(f"{d:+.{DIFF_DECIMALS}f}" for d in pair.diffs),
            "diff_mean": pair.mean_diff,
            "diff_t95_low": pair.t_low,
            "diff_t95_high": pair.t_high,
            "signflip_p": pair.p_value,
            "signflip_p_floor": pair.p_floor,
            "holm_p": holm_p,
            "mde80": pair.mde,
            "diff_boot95_low": pair.boot_low,
            "diff_boot95_high": pair.boot_high,
            "excluded": "; ".join(x.describe() for x in pair.excluded),
        }
    return row


def _estimate_cols(e: Estimate) -> dict[str, object]:
    return {
        "n": e.n,
        "n_failed": e.failed,
        "mean": e.mean,
        "std": e.std,
        "ci95_low": e.ci_low,
        "ci95_high": e.ci_high,
    }


def _score_table(
    protocol: str,
    metric_name: str,
    labels: list[str],
    columns: list[Column],
    means: dict[tuple[str, str, str], Estimate],
    multi: bool,
) -> DisplayTable:
    cells = _grid(labels, columns, multi, lambda lab, c: _mean_std(means.get((lab, *c))))
    found = _grid(labels, columns, multi, lambda lab, c: means.get((lab, *c)))
    return DisplayTable(
        "score",
        f"{protocol} {metric_name} (%), model selected on validation: mean ± std "
        "(n = distinct draws)",
        cells,
        separated_best(found),
        note="Bold: the best mean is separated from the runner-up (non-overlapping 95% CIs); "
        "no bold in a column: the best is not separated.",
    )


def _ci_table(
    labels: list[str],
    columns: list[Column],
    means: dict[tuple[str, str, str], Estimate],
    multi: bool,
) -> DisplayTable:
    past_bound = False

    def cell(label: str, col: Column) -> str:
        nonlocal past_bound
        e = means.get((label, *col))
        if e is None:
            return MISSING
        if e.n < 2:
            return f"n={e.n}: too few draws for an interval"
        mark = ""
        if e.ci_low < 0 or e.ci_high > 1:
            mark, past_bound = "†", True
        return f"[{pct(e.ci_low)}, {pct(e.ci_high)}]{mark} (n={e.n})"

    cells = _grid(labels, columns, multi, cell)
    note = (
        "† the t-interval passes 0 % or 100 %: the normal approximation fails for this bounded "
        "score at this n; read it as unreliable (it is not clipped)."
        if past_bound
        else ""
    )
    return DisplayTable(
        "ci", "95% confidence interval of the mean (Student t), %", cells, note=note
    )


def _optimism_table(
    labels: list[str],
    columns: list[Column],
    means: dict[tuple[str, str, str], Estimate],
    oracles: dict[tuple[str, str, str], Estimate],
    multi: bool,
) -> DisplayTable:
    def cell(label: str, col: Column) -> str:
        e, o = means.get((label, *col)), oracles.get((label, *col))
        if e is None or o is None or not o.n:
            return MISSING
        return f"{pct(e.mean)} → {pct(o.mean)} (Δ {pct(o.mean - e.mean, signed=True)}, n={o.n})"

    return DisplayTable(
        "optimism",
        "Validation-selected → oracle (best step on test) mean score, % (Δ = optimism)",
        _grid(labels, columns, multi, cell),
        note="The oracle picks the step by its test score: an optimistic bound, not a result.",
    )


PAIRED_COLUMNS = (
    "n pairs",
    "differences (pp)",
    "mean (pp)",
    "95% CI (t), pp",
    "p (sign-flip)",
    "p (Holm)",
    "MDE 80%, pp",
)


def _paired_table(
    baseline: str,
    columns: list[Column],
    pairs: dict[tuple[str, str, str], PairedComparison],
    adjusted: dict[tuple[str, str, str], float],
    multi: bool,
) -> DisplayTable:
    keys = [(label, s, m) for s, m in columns for (label, s2, m2) in pairs if (s2, m2) == (s, m)]
    index = pd.Index(
        [f"{label}, {_header((s, m), multi)}" for label, s, m in keys], name="method, shots"
    )
    rows = [_paired_cells(pairs[key], adjusted[key]) for key in keys]
    cells = pd.DataFrame(rows, index=index, columns=list(PAIRED_COLUMNS), dtype=object)
    excluded = [
        f"{label}, {_header((s, m), multi)}: {', '.join(x.describe() for x in p.excluded)}"
        for (label, s, m), p in pairs.items()
        if p.excluded
    ]
    note = "Excluded draws: " + "; ".join(excluded) if excluded else "All draws matched."
    return DisplayTable(
        "paired",
        f"Difference from baseline {baseline} on matching draws, percentage points; p: exact "
        "sign-flip test, Holm-adjusted over this table",
        cells,
        note=note,
    )


def _paired_cells(p: PairedComparison, holm_p: float) -> list[str]:
    diffs = ", ".join(pct(d, signed=True) for d in p.diffs) or MISSING
    if p.n_pairs < MIN_PAIRS:
        too_few = f"n={p.n_pairs}: too few pairs"
        return [str(p.n_pairs), diffs, pct(p.mean_diff, signed=True), too_few, too_few, MISSING,
                MISSING]  # fmt: skip
    ci = f"[{pct(p.t_low, signed=True)}, {pct(p.t_high, signed=True)}]"
    p_text = f"{p.p_value:.3g}"
    if not p.can_reach_alpha:
        p_text += f" (min {p.p_floor:.3g}: cannot reach {ALPHA})"
    return [str(p.n_pairs), diffs, pct(p.mean_diff, signed=True), ci, p_text, f"{holm_p:.3g}",
            pct(p.mde)]  # fmt: skip


def _per_class_table(
    protocol: str,
    class_metric: str,
    labels: list[str],
    columns: list[Column],
    per_class: dict[int, dict[tuple[str, str, str], Estimate]],
    names: dict[int, str],
    multi: bool,
) -> DisplayTable:
    rows = [
        (label, *col)
        for col in columns
        for label in labels
        if any((label, *col) in est for est in per_class.values())
    ]
    index = pd.Index(
        [f"{r[0]}, {_header((r[1], r[2]), multi)}" for r in rows], name="method, shots"
    )
    headers = [names[c] for c in per_class]
    cells = pd.DataFrame(MISSING, index=index, columns=headers, dtype=object)
    found = pd.DataFrame(None, index=index, columns=headers, dtype=object)
    for j, (_c, est) in enumerate(per_class.items()):
        for i, key in enumerate(rows):
            e = est.get(key)
            if e is not None and e.n:
                cells.iat[i, j] = f"{pct(e.mean, 1)} (n={e.n})"
                found.iat[i, j] = e
    at_column = [[(r[1], r[2]) == col for r in rows] for col in columns]
    bold = pd.concat([separated_best(found.loc[mask]) for mask in at_column if any(mask)])
    metric = CLASS_METRIC_NAMES.get(class_metric, class_metric)
    return DisplayTable(
        "per_class",
        f"Per-class {metric} (%, the {protocol} protocol's metric), model selected on "
        "validation: mean (n = draws); bold where separated within a class and shots",
        cells,
        bold.loc[index],
    )


def _reported_table(lit: pd.DataFrame, shots: list[str]) -> DisplayTable:
    columns = [shots_text(s) for s in shots_order([*shots, *lit.shots])]
    index = pd.Index([row_label(r.source, r.method) for r in lit.itertuples()], name="reported row")
    cells = pd.DataFrame(MISSING, index=index, columns=[*columns, "where"], dtype=object)
    for i, r in enumerate(lit.itertuples()):
        cells.iat[i, columns.index(shots_text(r.shots))] = pct(r.value)
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
    labels: list[str],
    columns: list[Column],
    multi: bool,
    fn: Callable[[str, Column], object],
) -> pd.DataFrame:
    return pd.DataFrame(
        [[fn(label, col) for col in columns] for label in labels],
        index=pd.Index(labels, name="method"),
        columns=[_header(col, multi) for col in columns],
        dtype=object,
    )


def _mean_std(e: Estimate | None) -> str:
    if e is None:
        return MISSING
    failed = f", {e.failed} failed" if e.failed else ""
    if e.n == 0:
        return f"failed ({e.failed} draw{'s' if e.failed != 1 else ''})"
    spread = f" ± {pct(e.std)}" if e.n > 1 else ""
    return f"{pct(e.mean)}{spread} (n={e.n}{failed})"


def _row_order(labels: pd.Series) -> list[str]:
    """Baselines first (scratch, imagenet), then the rest alphabetically."""
    rank = {name: i for i, name in enumerate(reversed(DEFAULT_BASELINES))}

    def key(label: str) -> tuple[int, str]:
        return rank.get(label.split(" (")[0].split(" ·")[0], 9), label

    return sorted(pd.unique(labels), key=key)


def _runs_of(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["id"].isin(metrics["run_id"])]


def _with_note(section: Section, note: str) -> Section:
    return Section(
        section.dataset,
        section.split,
        section.pool,
        section.protocol,
        section.profile,
        section.description,
        section.baseline,
        section.tables,
        (*section.notes, note),
    )


def _metric(card: DatasetCard | None, protocol: str) -> str:
    if card is None or protocol not in ("honest", *card.protocols):
        return "iou" if protocol == "honest" else ""
    return card.protocol(protocol).metric


def _class_metric(card: DatasetCard | None, protocol: str) -> str:
    return "dice" if _metric(card, protocol) == "dice" else "iou"


def _description(card: DatasetCard | None, protocol: str) -> str:
    if card is None or protocol not in ("honest", *card.protocols):
        return ""
    return card.protocol(protocol).description


def _class_names(card: DatasetCard | None, per_class: dict[int, dict]) -> dict[int, str]:
    names = dict(zip(card.class_ids, card.class_names, strict=True)) if card else {}
    return {c: names.get(c, f"class {c}") for c in per_class}
