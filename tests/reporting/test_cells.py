"""What a leaderboard cell may hold: one split, one pool mode, one evaluation mode, distinct draws,
failed runs shown as failed, and bold only where the best is separated."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from bench.reporting.leaderboard import Leaderboard, build_leaderboard
from bench.reporting.reported import load_reported
from bench.results.frames import load_results
from tests.helpers.store import add_run, sqlite_store


def board_of(tmp_path: Path, runs: list[dict], aggregate: bool = False) -> Leaderboard:
    store = sqlite_store(tmp_path)
    for run in runs:
        add_run(store, **run)
    results = load_results(store, protocol="honest")
    return build_leaderboard(results, load_reported(), aggregate_splits=aggregate)


def scores(board: Leaderboard) -> pd.DataFrame:
    c = board.cells
    return c[(c.kind == "measured") & (c.metric == "score")]


def test_two_splits_never_share_a_cell(tmp_path: Path):
    runs = [
        {"method": m, "score": v + d / 100, "split": split, "draw": d}
        for split, shift in (("fold0", 0.0), ("fold1", 0.3))
        for m, v in (("scratch", 0.3 + shift), ("simclr", 0.4 + shift))
        for d in range(3)
    ]
    board = board_of(tmp_path, runs)
    assert [s.split for s in board.sections] == ["fold0", "fold1"]
    cells = scores(board)
    assert set(cells.split) == {"fold0", "fold1"} and (cells.n == 3).all()
    fold1 = cells[(cells.split == "fold1") & (cells.method == "simclr")]
    assert fold1["mean"].item() == pytest.approx(0.71)  # fold 1's draws only
    assert "split fold0" in board.sections[0].title


def test_splits_are_aggregated_only_on_request_and_paired_within_split(tmp_path: Path):
    runs = [
        {"method": m, "score": v + (0.3 if split == "fold1" else 0) + d / 100, "split": split,
         "draw": d}
        for split in ("fold0", "fold1")
        for m, v in (("scratch", 0.3), ("simclr", 0.4))
        for d in range(3)
    ]  # fmt: skip
    board = board_of(tmp_path, runs, aggregate=True)
    (only,) = board.sections
    assert only.split == "fold0+fold1"
    assert any("splits fold0, fold1 aggregated on request" in n for n in only.notes)
    simclr = scores(board).query("method == 'simclr'").iloc[0]
    assert simclr["n"] == 6 and simclr["n_pairs"] == 6  # folds × draws
    assert simclr["diff_mean"] == pytest.approx(0.1)  # every pair within its fold: +0.10
    assert simclr["pair_draws"].split("; ")[3] == "fold1/draw 0"


def test_pool_modes_are_kept_apart(tmp_path: Path):
    runs = [
        {"method": "simclr", "score": 0.5 + d / 100, "draw": d, "pool": pool}
        for pool in ("honest", "transductive")
        for d in range(2)
    ]
    board = board_of(tmp_path, runs)
    assert [s.pool for s in board.sections] == ["honest", "transductive"]
    assert "pool transductive" in board.sections[1].title
    assert set(scores(board).pool) == {"honest", "transductive"}


def test_probe_and_finetune_side_by_side_and_paired_within_mode(tmp_path: Path):
    runs = [
        {"method": m, "score": v + d / 100, "draw": d, "modes": ("finetune", "probe")}
        for m, v in (("scratch", 0.3), ("simclr", 0.4))
        for d in range(3)
    ]
    board = board_of(tmp_path, runs)
    (only,) = board.sections
    table = only.table("score")
    assert list(table.cells.columns) == ["1 shot · fine-tune", "1 shot · probe"]
    cells = scores(board)
    probe = cells[(cells.method == "simclr") & (cells["mode"] == "probe")].iloc[0]
    assert probe["mean"] == pytest.approx(0.31)  # the probe's own rows (score - 0.1)
    assert probe["diff_mean"] == pytest.approx(0.1)  # simclr probe - scratch probe
    assert list(only.table("paired").cells.index) == [
        "simclr, 1 shot · fine-tune",
        "simclr, 1 shot · probe",
    ]


def test_draws_with_the_same_images_count_once(tmp_path: Path):
    runs = [
        {"method": "scratch", "score": v, "draw": d, "images": [img]}
        for d, (v, img) in enumerate([(0.3, "a"), (0.4, "b"), (0.5, "a")])  # draw 2 = draw 0
    ]
    board = board_of(tmp_path, runs)
    cell = scores(board).iloc[0]
    assert cell["n"] == 2
    assert cell["mean"] == pytest.approx(((0.3 + 0.5) / 2 + 0.4) / 2)
    assert any("draw 2 = draw 0" in note for note in board.sections[0].notes)


def test_failed_runs_are_shown_as_failed(tmp_path: Path):
    runs = [
        {"method": "scratch", "score": 0.3 + d / 100, "draw": d} for d in range(3)
    ] + [
        {"method": "simclr", "score": math.nan if d == 1 else 0.5, "draw": d} for d in range(3)
    ]  # fmt: skip
    board = board_of(tmp_path, runs)
    (only,) = board.sections
    assert only.table("score").cells.loc["simclr", "1 shot"] == "50.00 ± 0.00 (n=2, 1 failed)"
    simclr = scores(board).query("method == 'simclr'").iloc[0]
    assert simclr["n_failed"] == 1
    assert "default/draw 1 (simclr run failed (NaN score))" in simclr["excluded"]


def test_a_separated_best_is_bold_and_a_bound_crossing_interval_is_flagged(tmp_path: Path):
    runs = [
        {"method": m, "score": v, "draw": d}
        for m, values in (("scratch", (0.10, 0.11, 0.12)), ("simclr", (0.01, 0.30, 0.02)),
                          ("byol", (0.60, 0.61, 0.62)))
        for d, v in enumerate(values)
    ]  # fmt: skip
    board = board_of(tmp_path, runs)
    (only,) = board.sections
    bold = only.table("score").bold
    assert bold.loc["byol", "1 shot"] and bold.to_numpy().sum() == 1
    ci = only.table("ci")
    assert ci.cells.loc["simclr", "1 shot"].split(" (")[0].endswith("]†")  # runs below 0 %
    assert "not clipped" in ci.note
    assert bool(scores(board).query("method == 'byol'")["best"].item())


def test_tuned_rows_are_marked(tmp_path: Path):
    runs = [{"method": "scratch", "score": 0.3 + d / 100, "draw": d} for d in range(2)] + [
        {"method": "simclr", "score": 0.5, "draw": d, "tuned": 50, "params": {"lr": 0.1}}
        for d in range(2)
    ]
    board = board_of(tmp_path, runs)
    assert list(board.sections[0].table("score").cells.index) == ["scratch", "simclr · tuned 50"]
    assert "simclr · tuned 50" in set(scores(board).method)
