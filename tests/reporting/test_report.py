"""Plots (PNG + SVG) and the self-contained HTML report, rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data.cards import load_card
from bench.data.sources import load_labeled
from bench.reporting.leaderboard import build_leaderboard
from bench.reporting.plots import PlotSet, build_plots, save_plots
from bench.reporting.report import build_report, write_report
from bench.reporting.reported import load_reported
from bench.results.frames import load_results
from bench.results.store import ResultStore
from tests.helpers.store import add_run, sqlite_store

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
STEMS = ("test_000", "test_001")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ResultStore:
    """Three methods on the synthetic card; two runs carry predictions, one pretraining losses."""
    folder = tmp_path_factory.mktemp("report")
    store = sqlite_store(folder)
    card = load_card("synthetic")
    predictions = {}
    for item in load_labeled(card, folder, list(STEMS)):
        path = folder / f"{item.stem}.png"
        Image.fromarray(np.roll(item.mask, 5, axis=1)).save(path)
        predictions[item.stem] = str(path)
    for draw in range(3):
        extra = {"predictions": predictions} if draw == 0 else {}
        add_run(store, "scratch", 0.40 + draw / 50, draw=draw, summary=extra)
        add_run(store, "imagenet", 0.50 + draw / 50, draw=draw)
        add_run(
            store,
            "simclr",
            0.60 + draw / 50,
            draw=draw,
            summary={**extra, "pretrain_losses": [4.0, 3.1, 2.7, 2.5]},
        )
        add_run(store, "simclr", 0.70 + draw / 50, shots="4", draw=draw)
    return store


@pytest.fixture(scope="module")
def plots(store: ResultStore) -> PlotSet:
    return build_plots(load_results(store), Path("unused-for-synthetic"))


def test_plots_are_written_as_png_and_svg(plots: PlotSet, tmp_path: Path):
    names = {p.name for p in plots.plots}
    assert names == {
        "shots_miou",
        "shots_mdice",
        "forest_miou",
        "forest_mdice",
        "per_class_iou_synthetic_default_honest_quick",
        "qualitative_synthetic_quick",
        "pretrain_losses",
    }
    assert plots.notes == ()
    written = save_plots(plots, tmp_path)
    assert {p.name for p in written} == {f"{n}.{ext}" for n in names for ext in ("png", "svg")}
    for path in written:
        assert path.stat().st_size > 1000, path
    assert (tmp_path / "shots_miou.png").read_bytes().startswith(b"\x89PNG")
    assert "<svg" in (tmp_path / "shots_miou.svg").read_text()


def test_figures_without_inputs_are_skipped_with_a_note(tmp_path: Path):
    store = sqlite_store(tmp_path)
    add_run(store, "scratch", 0.4)
    plots = build_plots(load_results(store), tmp_path)
    assert {p.name for p in plots.plots} == {
        "shots_miou",
        "shots_mdice",
        "per_class_iou_synthetic_default_honest_quick",
    }
    assert any("no stored test predictions" in note for note in plots.notes)
    assert any("no forest plot" in note for note in plots.notes)
    assert any("pretraining losses" in note for note in plots.notes)


@pytest.fixture(scope="module")
def report(store: ResultStore, plots: PlotSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = load_results(store)
    html = build_report(results, build_leaderboard(results, load_reported()), plots)
    return write_report(html, tmp_path_factory.mktemp("html") / "report.html")


def test_report_is_self_contained(report: Path, plots: PlotSet):
    html = report.read_text()
    assert html.count('src="data:image/png;base64,') == len(plots.plots)
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)  # no external resource
    assert "<link" not in html and "@import" not in html and "url(" not in html
    for expected in (
        "synthetic · split default · pool honest · honest · profile quick",
        "Difference from baseline imagenet",
        "abc1234",
        "torch",
        "2.5.0",
        "cpu",
        "Configurations",
        "pretraining loss",
    ):
        assert expected.lower() in html.lower(), expected


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report: Path, plots: PlotSet, tmp_path: Path):
    dom = subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            report.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attributes["images-ok"] == "true"  # every <img> decoded (naturalWidth > 0)
    assert int(attributes["image-count"]) == len(plots.plots)
    assert int(attributes["table-count"]) >= 12  # 2 protocols × 5 leaderboard tables + metadata


def test_plot_and_report_commands(tmp_path: Path, cli):
    store = sqlite_store(tmp_path)
    add_run(store, "scratch", 0.4)
    code, stdout, _ = cli(["plot", "--store", store.url, "--out", tmp_path / "plots"])
    assert code == 0 and "skipped:" in stdout  # no predictions, no losses, no baseline pair
    assert (tmp_path / "plots" / "shots_miou.svg").stat().st_size > 0
    code, _, _ = cli(["report", "--store", store.url, "--out", tmp_path / "r.html"])
    assert code == 0 and (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    for command, out in (("report", tmp_path / "none.html"), ("plot", tmp_path / "none")):
        code, _, stderr = cli([command, "--store", empty, "--out", out])
        assert code == 2 and "no succeeded runs" in stderr
        assert not out.exists()


def test_figures_separate_methods_and_keep_legends_outside(plots: PlotSet):
    shots = next(p for p in plots.plots if p.name == "shots_miou").figure
    (legend,) = shots.legends  # one figure legend, none inside a panel
    assert not any(ax.get_legend() for ax in shots.axes)
    assert [t.get_text() for t in legend.get_texts()] == ["imagenet", "scratch", "simclr"]
    lines = [c.lines[0] for c in shots.axes[0].containers]  # one errorbar line per method
    styles = {(line.get_color(), line.get_marker()) for line in lines}
    assert len(lines) == len(styles) == 3  # distinct colour and marker per method
    forest = next(p for p in plots.plots if p.name == "forest_miou").figure
    labels = [t.get_text() for t in forest.axes[0].get_yticklabels()]
    assert labels == ["scratch, 1 shot", "simclr, 1 shot"]  # vs the baseline, imagenet
    assert "difference from imagenet" in forest.axes[0].get_xlabel()


def test_densecl_loss_rise_is_explained(tmp_path: Path):
    store = sqlite_store(tmp_path)
    add_run(store, "densecl", 0.4, summary={"pretrain_losses": [5.0, 5.4, 5.6]})
    add_run(store, "densecl", 0.4, draw=1, summary={"pretrain_losses": [5.0, 5.3, 5.5]})
    plots = build_plots(load_results(store), tmp_path)
    losses = next(p for p in plots.plots if p.name == "pretrain_losses")
    assert "queue" in losses.caption
    assert any("queue" in t.get_text() for t in losses.figure.texts)


def test_plots_give_each_split_and_mode_its_own_panel(tmp_path: Path):
    store = sqlite_store(tmp_path)
    for split in ("fold0", "fold1"):
        for draw in range(2):
            add_run(store, "scratch", 0.4, split=split, draw=draw, modes=("finetune", "probe"))
    shots = build_plots(load_results(store), tmp_path).plots[0].figure
    titles = [ax.get_title() for ax in shots.axes if ax.get_visible()]
    assert len(titles) == 4 and len(set(titles)) == 4  # 2 splits × 2 modes, never pooled
    assert sum("fold1" in t and "probe" in t for t in titles) == 1
    joined = build_plots(load_results(store), tmp_path, aggregate_splits=True).plots[0].figure
    assert next(ax.get_title() for ax in joined.axes if ax.get_visible()).startswith(
        "synthetic · fold0+fold1"
    )
