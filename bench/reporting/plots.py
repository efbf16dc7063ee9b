"""Figures of the results, saved as PNG and SVG (matplotlib ``Figure`` objects on the Agg canvas).

Every panel is one (dataset, split, SSL pool, profile) and, where it matters, one evaluation mode
(fine-tune or probe), as in the leaderboard; ``aggregate_splits`` combines a dataset's splits.

- ``shots_miou`` / ``shots_mdice``: honest mIoU and mean foreground Dice vs the number of labeled
  images (log2 axis), mean and Student-t 95% CI per method over distinct draws, a panel per mode.
- ``forest_<metric>``: paired differences from the baseline (mean and Student-t 95% CI over
  matching draws, percentage points) per method, shots level and mode.
- ``per_class_iou_<dataset>_<profile>``: methods × classes heatmap of IoU, a panel per shots level.
- ``qualitative_<dataset>_<profile>``: a few test images | ground truth | each method's prediction
  (from ``summary["predictions"]``), in the card's class colours with a legend.
- ``pretrain_losses``: each pretraining's loss per step (``summary["pretrain_losses"]``).

Methods get distinct colours and markers; legends sit outside the data. A figure whose inputs are
absent (no predictions, no data, no losses) is skipped with a note.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from bench.core.errors import BenchError
from bench.data.cards import load_card
from bench.data.sources import load_labeled
from bench.reporting.stats import (
    DEFAULT_BASELINES,
    MIN_PAIRS,
    default_baseline,
    estimate,
    paired_comparison,
    per_draw,
)
from bench.results.frames import Results, card_for, shots_order, shots_text

SHOTS_METRICS = {"miou": "mIoU", "mdice_fg": "mean foreground Dice"}
MODES = {"finetune": "fine-tune", "probe": "probe"}
PLOT_PROTOCOL = "honest"
QUALITATIVE_IMAGES = 3
PANEL_SIZE = (5.2, 3.8)
MAX_COLUMNS = 2  # panels per row: the report shows figures about 1100 px wide
FONT_SIZE = 11
DODGE = 0.05  # horizontal offset between methods, in log2 units
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")
LOSS_NOTES = {
    "densecl": "DenseCL's loss rises at first: its negative queue starts empty and fills with "
    "real keys, which are harder negatives than none.",
}
GROUP_KEYS = ("dataset", "split_group", "pool", "profile")


@dataclass(frozen=True)
class Plot:
    name: str  # file stem
    caption: str
    figure: Figure


@dataclass(frozen=True)
class PlotSet:
    plots: tuple[Plot, ...]
    notes: tuple[str, ...]  # figures skipped, and why


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    linestyle: str


def build_plots(
    results: Results,
    data_root: Path,
    baseline: str | None = None,
    aggregate_splits: bool = False,
) -> PlotSet:
    """Every figure ``results`` supports; ``data_root`` holds the qualitative grid's images."""
    with rc_context({"font.size": FONT_SIZE}):
        return _build_plots(results, data_root, baseline, aggregate_splits)


def _build_plots(
    results: Results, data_root: Path, baseline: str | None, aggregate_splits: bool
) -> PlotSet:
    plots: list[Plot] = []
    notes: list[str] = []
    styles = method_styles(results.runs["label"])
    metrics = results.metrics
    if aggregate_splits and not metrics.empty:
        metrics = metrics.assign(
            split_group=metrics.groupby("dataset")["split"].transform(
                lambda s: "+".join(sorted(pd.unique(s)))
            )
        )
    else:
        metrics = metrics.assign(split_group=metrics["split"])
    selected = metrics[
        (metrics.protocol == PLOT_PROTOCOL)
        & (metrics.selection == "val")
        & (metrics.split_part == "test")
    ]
    for metric, name in SHOTS_METRICS.items():
        rows = selected[selected.metric == metric]
        stem = metric.removesuffix("_fg")
        if rows.empty:
            notes.append(f"no {PLOT_PROTOCOL} {name} in the store: no shots plot")
            continue
        plots.append(shots_plot(rows, name, styles, f"shots_{stem}"))
        forest = forest_plot(rows, name, baseline, f"forest_{stem}")
        if forest is None:
            notes.append(f"no paired comparison of {name} with a baseline: no forest plot")
        else:
            plots.append(forest)
    for (dataset, split, pool, profile), rows in selected[selected.metric == "iou"].groupby(
        list(GROUP_KEYS)
    ):
        fine = rows[rows["mode"] == rows["mode"].min()]  # fine-tune where present
        plots.append(per_class_plot(fine, dataset, profile, split, pool))
    for (dataset, profile), runs in results.runs.groupby(["dataset", "profile"]):
        plot, note = qualitative_plot(runs, dataset, profile, data_root)
        plots += [plot] if plot else []
        notes += [note] if note else []
    losses = pretrain_loss_plot(results.runs)
    if losses is None:
        notes.append("no run recorded pretraining losses: no pretraining loss plot")
    else:
        plots.append(losses)
    return PlotSet(tuple(plots), tuple(notes))


def save_plots(plots: PlotSet, out_dir: Path) -> list[Path]:
    """Each figure as ``<name>.png`` and ``<name>.svg`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for plot in plots.plots:
        for ext in ("png", "svg"):
            path = out_dir / f"{plot.name}.{ext}"
            plot.figure.savefig(path, format=ext, dpi=150, bbox_inches="tight")
            written.append(path)
    return written


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def shots_plot(rows: pd.DataFrame, metric_name: str, styles: dict[str, Style], name: str) -> Plot:
    """Mean and 95% CI vs labeled images per method; a panel per (dataset, split, pool, profile,
    mode)."""
    panels = list(rows.groupby([*GROUP_KEYS, "mode"], sort=True))
    fig, axes = _panels(len(panels))
    shown: dict[str, Artist] = {}
    for ax, (key, frame) in zip(axes, panels, strict=False):
        x_of = frame.groupby("shots_label")["shots"].median()
        draws = per_draw(frame, column="label").reset_index()
        groups = list(draws.groupby("label"))
        counts = []
        for i, (label, by_label) in enumerate(groups):
            order = shots_order(by_label.shots_label)
            est = [estimate(by_label[by_label.shots_label == s]["value"]) for s in order]
            counts += [e.n for e in est]
            dodge = 2 ** (DODGE * (i - (len(groups) - 1) / 2))  # keeps error bars apart
            x = dodge * np.array([x_of[s] for s in order], dtype=float)
            mean = 100 * np.array([e.mean for e in est])
            low = 100 * np.array([e.ci_low for e in est])
            high = 100 * np.array([e.ci_high for e in est])
            style = styles[str(label)]
            shown[str(label)] = ax.errorbar(
                x,
                mean,
                yerr=[np.nan_to_num(mean - low), np.nan_to_num(high - mean)],
                marker=style.marker,
                linestyle=style.linestyle,
                capsize=3,
                color=style.color,
            )
        ticks = shots_order(frame.shots_label)
        ax.set_xscale("log", base=2)
        ax.set_xlim(x_of.min() / 1.5, x_of.max() * 1.5)
        ax.set_xticks(
            [x_of[s] for s in ticks], [f"all ({x_of[s]:g})" if s == "all" else s for s in ticks]
        )
        ax.minorticks_off()
        ax.set(
            title=_panel_title(key),
            xlabel="labeled training images",
            ylabel=f"{metric_name} (%)",
        )
        ax.text(0.02, 0.02, _n_text(counts), transform=ax.transAxes, fontsize="small")
        ax.grid(alpha=0.3)
    _legend(fig, shown)
    fig.suptitle(f"Test {metric_name} (%) vs labeled images: mean and 95% CI (Student t)")
    return Plot(
        name,
        f"{metric_name} ({PLOT_PROTOCOL} protocol) vs number of labeled images, a panel per "
        "split, pool and evaluation mode",
        fig,
    )


def forest_plot(
    rows: pd.DataFrame, metric_name: str, baseline: str | None, name: str
) -> Plot | None:
    """Paired differences from the baseline with their t-intervals; None without any pair."""
    panels = []
    for key, frame in rows.groupby([*GROUP_KEYS, "mode"], sort=True):
        base = _baseline_label(list(pd.unique(frame.label)), baseline)
        if base is None:
            continue
        entries = []
        for s in shots_order(frame.shots_label):
            at = frame[frame.shots_label == s]
            for label in sorted(set(at.label) - {base}):
                if base in set(at.label):
                    pair = paired_comparison(at, label, base, column="label")
                    if pair.n_pairs:
                        entries.append((f"{label}, {shots_text(s)}", pair))
        if entries:
            panels.append((key, base, entries))
    if not panels:
        return None
    tallest = max(len(entries) for _, _, entries in panels)
    fig, axes = _panels(len(panels), size=(PANEL_SIZE[0] + 1.5, 0.45 * tallest + 1.6))
    for ax, (key, base, entries) in zip(axes, panels, strict=False):
        y = np.arange(len(entries))[::-1]
        for yi, (_text, pair) in zip(y, entries, strict=True):
            mean = 100 * pair.mean_diff
            if pair.n_pairs >= MIN_PAIRS:
                ax.errorbar(
                    mean,
                    yi,
                    xerr=[[mean - 100 * pair.t_low], [100 * pair.t_high - mean]],
                    fmt="o",
                    color="C0",
                    capsize=3,
                )
                note = f"n={pair.n_pairs}, p={pair.p_value:.2g}"
            else:
                ax.plot(mean, yi, "o", mfc="white", color="C7")
                note = f"n={pair.n_pairs}: too few for a CI"
            ax.annotate(note, (1.01, yi), xycoords=("axes fraction", "data"), va="center",
                        fontsize="small")  # fmt: skip
        ax.axvline(0, color="black", linewidth=1)
        ax.set_yticks(y, [text for text, _ in entries])
        ax.set(
            title=_panel_title(key),
            xlabel=f"{metric_name} difference from {base} (percentage points)",
        )
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Paired differences in test {metric_name}: mean and 95% CI (Student t)")
    return Plot(
        name,
        f"Forest plot: {metric_name} difference from the baseline on matching draws "
        "(open circles: too few pairs for an interval)",
        fig,
    )


def per_class_plot(rows: pd.DataFrame, dataset: str, profile: str, split: str, pool: str) -> Plot:
    """Heatmaps of mean per-class IoU (methods × classes), one panel per shots level."""
    card = card_for(dataset)
    shots = shots_order(rows.shots_label)
    labels = sorted(rows.label.unique())
    classes = sorted(int(c) for c in rows.class_id.dropna().unique())
    names = [
        card.class_names[c] if card and c < card.num_classes else f"class {c}" for c in classes
    ]
    fig, axes = _panels(len(shots), size=(1.3 * len(classes) + 2.5, 0.55 * len(labels) + 2.0))
    for ax, s in zip(axes, shots, strict=True):
        grid = np.full((len(labels), len(classes)), np.nan)
        at = rows[rows.shots_label == s]
        for j, c in enumerate(classes):
            means = per_draw(at[at.class_id == c], column="label").groupby(level=0).mean()
            for i, label in enumerate(labels):
                grid[i, j] = 100 * means.get(label, np.nan)
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v:.1f}",
                    ha="center",
                    va="center",
                    fontsize="small",
                    color="white" if v < 60 else "black",
                )
        ax.set_xticks(range(len(classes)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(shots_text(s))
    fig.colorbar(image, ax=list(axes), label="IoU (%)", shrink=0.8)
    where = f"{dataset} · {split} · pool {pool} ({profile})"
    fig.suptitle(f"Per-class IoU (%), {where}, mean over draws")
    return Plot(
        f"per_class_iou_{_slug(dataset)}_{_slug(split)}_{_slug(pool)}_{_slug(profile)}",
        f"Per-class IoU, {where}",
        fig,
    )


def qualitative_plot(
    runs: pd.DataFrame, dataset: str, profile: str, data_root: Path
) -> tuple[Plot | None, str | None]:
    """Image | ground truth | each method's prediction for a few test images, or a skip note."""
    where = f"{dataset} ({profile})"
    chosen = _prediction_runs(runs)
    if chosen.empty:
        return None, f"{where}: no stored test predictions: no qualitative grid"
    first = chosen.iloc[0].summary["predictions"]
    stems = sorted(first)[:QUALITATIVE_IMAGES]
    try:
        card = load_card(dataset)
        images = load_labeled(card, data_root, stems)
    except BenchError as exc:
        return None, f"{where}: qualitative grid skipped: {exc}"
    palette = np.array([c.color for c in card.classes], dtype=np.uint8)
    columns = ["image", "ground truth", *chosen.label]
    fig = Figure(figsize=(2.3 * len(columns), 2.3 * len(images) + 0.8), layout="constrained")
    axes = fig.subplots(len(images), len(columns), squeeze=False)
    for row, item in zip(axes, images, strict=True):
        row[0].imshow(item.image, cmap="gray")
        row[1].imshow(palette[item.mask], interpolation="nearest")
        for ax, run in zip(row[2:], chosen.itertuples(), strict=True):
            pred = _read_prediction(run.summary["predictions"].get(item.stem))
            if pred is None:
                ax.text(0.5, 0.5, "no prediction", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(
                    palette[np.clip(pred, 0, len(palette) - 1)], interpolation="nearest"
                )  # class colours stay pure: small PNG and SVG
        row[0].set_ylabel(item.stem, fontsize="small")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[0], columns, strict=True):
        ax.set_title(title, fontsize="small")
    handles = [
        Patch(facecolor=np.array(c.color) / 255, edgecolor="grey", label=c.name)
        for c in card.classes
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
    shots = chosen.iloc[0].shots_label
    fig.suptitle(f"{dataset} ({profile}), {shots_text(shots)}, lowest draw per method")
    return Plot(
        f"qualitative_{_slug(dataset)}_{_slug(profile)}",
        f"Test predictions, {where}, {shots_text(shots)}",
        fig,
    ), None


def pretrain_loss_plot(runs: pd.DataFrame) -> Plot | None:
    """Pretraining loss per step, one line per distinct pretraining; None if none was recorded."""
    losses = runs.assign(
        losses=runs.summary.map(lambda s: (s or {}).get("pretrain_losses") or None),
        every=runs.summary.map(lambda s: (s or {}).get("pretrain_loss_every") or 1),
    )
    losses = losses.dropna(subset=["losses"]).drop_duplicates(
        ["label", "dataset", "profile", "pretrain_hash"]
    )
    if losses.empty:
        return None
    panels = list(losses.groupby(["dataset", "profile"]))
    fig, axes = _panels(len(panels))
    shown: dict[str, Artist] = {}
    lines = sorted({_loss_name(r) for r in losses.itertuples()})
    styles = method_styles(pd.Series(lines))  # every pretraining its own colour and style
    for ax, ((dataset, profile), frame) in zip(axes, panels, strict=False):
        for run in frame.itertuples():
            line = _loss_name(run)
            style = styles[line]
            steps = (np.arange(len(run.losses)) + 1) * int(run.every)
            (shown[line],) = ax.plot(
                steps, run.losses, color=style.color, linestyle=style.linestyle
            )
        ax.set(title=f"{dataset} ({profile})", xlabel="pretraining step", ylabel="loss")
        ax.grid(alpha=0.3)
    _legend(fig, shown, "pretraining (method, split [cache key])")
    notes = [text for method, text in LOSS_NOTES.items() if method in set(losses.method)]
    if notes:
        fig.text(0.0, -0.02, " ".join(notes), fontsize="small", ha="left", va="top", wrap=True)
    fig.suptitle("Self-supervised pretraining loss")
    return Plot(
        "pretrain_losses",
        "Pretraining loss per step" + (f". {' '.join(notes)}" if notes else ""),
        fig,
    )


def method_styles(labels: pd.Series) -> dict[str, Style]:
    """A distinct (colour, marker, line style) per label, stable by sorted label."""
    palette = [f"C{i}" for i in range(10)]
    names = sorted(pd.unique(labels.astype(str)))
    return {
        label: Style(
            palette[i % 10], MARKERS[i % len(MARKERS)], LINESTYLES[(i // 10) % len(LINESTYLES)]
        )
        for i, label in enumerate(names)
    }


def _loss_name(run: object) -> str:
    label, split = run.label, run.split
    return f"{label}, {split} [{(run.pretrain_hash or '')[:6]}]"


def _legend(fig: Figure, handles: dict[str, Artist], title: str = "method") -> None:
    """One legend for the figure, outside every panel (right of them)."""
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside right upper",
            fontsize="small",
            title=title,
            title_fontsize="small",
        )


def _panel_title(key: tuple) -> str:
    dataset, split, pool, profile, *mode = key
    parts = [f"{dataset} · {split}", f"pool {pool} · {profile}"]
    if mode:
        parts[1] += f" · {MODES.get(mode[0], mode[0])}"
    return "\n".join(parts)


def _n_text(counts: list[int]) -> str:
    distinct = sorted(set(counts))
    if len(distinct) == 1:
        return f"n = {distinct[0]} draws per point"
    return f"n = {distinct[0]}–{distinct[-1]} draws per point"


def _baseline_label(labels: list[str], wanted: str | None) -> str | None:
    for name in (wanted,) if wanted else DEFAULT_BASELINES:
        found = [lab for lab in labels if lab == name or lab.startswith((f"{name} (", f"{name} ·"))]
        if found:
            return sorted(found)[0]
    return default_baseline(labels)


def _prediction_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per method with predictions, at the (split, shots) most methods share."""
    has = runs[runs.summary.map(lambda s: bool((s or {}).get("predictions")))]
    if has.empty:
        return has
    coverage = has.groupby(["split", "shots_label"]).agg(
        methods=("label", "nunique"), shots=("shots", "min")
    )
    split, shots = coverage.sort_values(["methods", "shots"], ascending=[False, True]).index[0]
    at = has[(has.split == split) & (has.shots_label == shots)]
    return at.sort_values(["draw", "id"]).drop_duplicates("label").sort_values("label")


def _read_prediction(path: str | None) -> np.ndarray | None:
    if not path or not Path(path).is_file():
        return None
    with Image.open(path) as img:
        return np.asarray(img)


def _panels(count: int, size: tuple[float, float] = PANEL_SIZE) -> tuple[Figure, list]:
    """A grid of ``count`` panels, at most ``MAX_COLUMNS`` a row; unused cells hidden."""
    cols = max(1, min(count, MAX_COLUMNS))
    rows = max(1, math.ceil(count / cols))
    fig = Figure(figsize=(size[0] * cols + 1.8, size[1] * rows + 0.6), layout="constrained")
    fig.set_layout_engine("constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    for ax in axes:
        ax.tick_params(labelsize=FONT_SIZE - 1)
    return fig, axes[:count] if count else axes


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)
