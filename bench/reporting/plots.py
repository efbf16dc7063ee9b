"""Figures of the results, saved as PNG and SVG (matplotlib ``Figure`` objects on the Agg canvas).

- ``shots_miou`` / ``shots_mdice``: honest mIoU and mean foreground Dice vs the number of labeled
  images (log2 axis), mean line and Student-t 95% CI band per method, one panel per dataset.
- ``per_class_iou_<dataset>_<profile>``: methods × classes heatmap of IoU, a panel per shots level.
- ``qualitative_<dataset>_<profile>``: a few test images | ground truth | each method's prediction
  (from ``summary["predictions"]``), in the card's class colours with a legend.
- ``pretrain_losses``: each method's pretraining loss per epoch (``summary["pretrain_losses"]``).

A figure whose inputs are absent (no predictions, no data, no losses) is skipped with a note.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image

from bench.core.errors import BenchError
from bench.data.cards import load_card
from bench.data.sources import load_labeled
from bench.reporting.stats import estimate, per_draw
from bench.results.frames import Results, card_for, shots_order

SHOTS_METRICS = {"miou": "mIoU", "mdice_fg": "mean foreground Dice"}
PLOT_PROTOCOL = "honest"
QUALITATIVE_IMAGES = 3
PANEL_SIZE = (4.8, 3.6)
DODGE = 0.04  # horizontal offset between methods, in log2 units


@dataclass(frozen=True)
class Plot:
    name: str  # file stem
    caption: str
    figure: Figure


@dataclass(frozen=True)
class PlotSet:
    plots: tuple[Plot, ...]
    notes: tuple[str, ...]  # figures skipped, and why


def build_plots(results: Results, data_root: Path) -> PlotSet:
    """Every figure ``results`` supports; ``data_root`` holds the qualitative grid's images."""
    plots: list[Plot] = []
    notes: list[str] = []
    colors = _method_colors(results.runs["label"])
    selected = results.metrics[
        (results.metrics.protocol == PLOT_PROTOCOL)
        & (results.metrics.selection == "val")
        & (results.metrics.split_part == "test")
    ]
    for metric, name in SHOTS_METRICS.items():
        rows = selected[selected.metric == metric]
        if rows.empty:
            notes.append(f"no {PLOT_PROTOCOL} {name} in the store: no shots plot")
        else:
            plots.append(shots_plot(rows, name, colors, f"shots_{metric.removesuffix('_fg')}"))
    for (dataset, profile), rows in selected[selected.metric == "iou"].groupby(
        ["dataset", "profile"]
    ):
        plots.append(per_class_plot(rows, dataset, profile))
    for (dataset, profile), runs in results.runs.groupby(["dataset", "profile"]):
        plot, note = qualitative_plot(runs, dataset, profile, data_root)
        plots += [plot] if plot else []
        notes += [note] if note else []
    losses = pretrain_loss_plot(results.runs, colors)
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


def shots_plot(rows: pd.DataFrame, metric_name: str, colors: dict[str, str], name: str) -> Plot:
    """Mean and 95% CI band vs labeled images per method; one panel per (dataset, profile)."""
    panels = list(rows.groupby(["dataset", "profile"]))
    fig, axes = _panels(len(panels))
    for ax, ((dataset, profile), frame) in zip(axes, panels, strict=True):
        x_of = frame.groupby("shots_label")["shots"].median()
        draws = per_draw(frame, column="label").reset_index()
        groups = list(draws.groupby("label"))
        for i, (label, by_label) in enumerate(groups):
            order = shots_order(by_label.shots_label)
            est = [estimate(by_label[by_label.shots_label == s]["value"]) for s in order]
            dodge = 2 ** (DODGE * (i - (len(groups) - 1) / 2))  # keeps error bars apart
            x = dodge * np.array([x_of[s] for s in order], dtype=float)
            mean = 100 * np.array([e.mean for e in est])
            low = 100 * np.array([e.ci_low for e in est])
            high = 100 * np.array([e.ci_high for e in est])
            n = ", ".join(str(e.n) for e in est)
            ax.errorbar(
                x,
                mean,
                yerr=[mean - low, high - mean],
                marker="o",
                capsize=3,
                color=colors[label],
                label=f"{label} (n={n})",
            )
            ax.fill_between(x, low, high, color=colors[label], alpha=0.18, linewidth=0)
        ticks = shots_order(frame.shots_label)
        ax.set_xscale("log", base=2)
        ax.set_xlim(x_of.min() / 1.5, x_of.max() * 1.5)
        ax.set_xticks(
            [x_of[s] for s in ticks], [f"all ({x_of[s]:g})" if s == "all" else s for s in ticks]
        )
        ax.minorticks_off()
        ax.set(
            title=f"{dataset} ({profile})",
            xlabel="labeled training images",
            ylabel=f"{metric_name} (%)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", title="method (n = draws per point)", title_fontsize="small")
    fig.suptitle(f"Test {metric_name} vs labeled images: mean and 95% CI (Student t) over draws")
    return Plot(name, f"{metric_name} ({PLOT_PROTOCOL} protocol) vs number of labeled images", fig)


def per_class_plot(rows: pd.DataFrame, dataset: str, profile: str) -> Plot:
    """Heatmaps of mean per-class IoU (methods × classes), one panel per shots level."""
    card = card_for(dataset)
    shots = shots_order(rows.shots_label)
    labels = sorted(rows.label.unique())
    classes = sorted(int(c) for c in rows.class_id.dropna().unique())
    names = [
        card.class_names[c] if card and c < card.num_classes else f"class {c}" for c in classes
    ]
    fig, axes = _panels(len(shots), size=(1.1 * len(classes) + 2.5, 0.45 * len(labels) + 1.8))
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
        ax.set_title("all labeled" if s == "all" else f"{s} shot{'s' if s != '1' else ''}")
    fig.colorbar(image, ax=list(axes), label="IoU (%)", shrink=0.8)
    fig.suptitle(f"Per-class IoU (%), {dataset} ({profile}), mean over draws")
    return Plot(
        f"per_class_iou_{_slug(dataset)}_{_slug(profile)}",
        f"Per-class IoU, {dataset} ({profile})",
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
    fig.suptitle(f"{dataset} ({profile}), {shots}-shot models, lowest draw per method")
    return Plot(
        f"qualitative_{_slug(dataset)}_{_slug(profile)}",
        f"Test predictions, {where}, {shots} shots",
        fig,
    ), None


def pretrain_loss_plot(runs: pd.DataFrame, colors: dict[str, str]) -> Plot | None:
    """Pretraining loss per epoch, one line per distinct pretraining; None if none was recorded."""
    losses = runs.assign(
        losses=runs.summary.map(lambda s: (s or {}).get("pretrain_losses") or None)
    )
    losses = losses.dropna(subset=["losses"]).drop_duplicates(
        ["label", "dataset", "profile", "pretrain_hash"]
    )
    if losses.empty:
        return None
    panels = list(losses.groupby(["dataset", "profile"]))
    fig, axes = _panels(len(panels))
    for ax, ((dataset, profile), frame) in zip(axes, panels, strict=True):
        several = frame.label.duplicated(keep=False)
        for run, many in zip(frame.itertuples(), several, strict=True):
            suffix = f" [{(run.pretrain_hash or '')[:6]}]" if many else ""
            ax.plot(
                range(1, len(run.losses) + 1),
                run.losses,
                color=colors[run.label],
                label=f"{run.label}{suffix}",
            )
        ax.set(title=f"{dataset} ({profile})", xlabel="epoch", ylabel="pretraining loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Self-supervised pretraining loss")
    return Plot("pretrain_losses", "Pretraining loss per epoch", fig)


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
    fig = Figure(figsize=(size[0] * count, size[1] + 0.6), layout="constrained")
    return fig, list(fig.subplots(1, count, squeeze=False)[0])


def _method_colors(labels: pd.Series) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {label: palette[i % 10] for i, label in enumerate(sorted(labels.unique()))}


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)
