"""The leaderboard against a hand-built store: numbers, pairing, reported rows, files and CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from bench.reporting.leaderboard import Leaderboard, Section, build_leaderboard, write_leaderboard
from bench.reporting.reported import load_reported
from bench.results.frames import load_results
from bench.results.store import ResultStore
from tests.helpers.store import add_run, sqlite_store

T_975_DF2 = 4.302652729911275  # Student t 0.975 quantile, 2 degrees of freedom (tables)
SCRATCH = {0: 0.40, 1: 0.44, 2: 0.42}
IMAGENET = {0: 0.50, 1: 0.56, 2: 0.53}
SIMCLR = {0: 0.60, 1: 0.61, 2: 0.65, 3: 0.90}  # draw 3 has no imagenet partner
METALDAM_IOU = (0.9, 0.8, 0.5, float("nan"), 0.3)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    store = sqlite_store(tmp_path_factory.mktemp("lb"))
    for method, scores in (("scratch", SCRATCH), ("imagenet", IMAGENET), ("simclr", SIMCLR)):
        for draw, score in scores.items():
            add_run(store, method, score, draw=draw)
    add_run(store, "imagenet", 0.70, shots="4")
    add_run(store, "simclr", 0.75, shots="4")
    for draw, score in enumerate((0.62, 0.66)):
        add_run(
            store,
            "simclr",
            score,
            dataset="metaldam",
            split="fold0",
            draw=draw,
            iou=METALDAM_IOU,
            protocols=("honest", "matssl-paper"),
        )
    return store.url


@pytest.fixture(scope="module")
def board(store_url: str) -> Leaderboard:
    return build_leaderboard(load_results(ResultStore(store_url)), load_reported())


def cell(board: Leaderboard, method: str, shots: str = "1") -> pd.Series:
    """The tidy row of a synthetic/honest score."""
    c = board.cells
    (index,) = c.index[
        (c.dataset == "synthetic")
        & (c.protocol == "honest")
        & (c.method == method)
        & (c.shots == shots)
        & (c.metric == "score")
    ]
    return c.loc[index]


def section(board: Leaderboard, dataset: str, protocol: str) -> Section:
    return next(s for s in board.sections if s.dataset == dataset and s.protocol == protocol)


def simclr_one_shot() -> str:
    """The simclr 1-shot cell computed by hand from SIMCLR."""
    values = list(SIMCLR.values())
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    return f"{100 * mean:.2f} ± {100 * std:.2f} (n=4)"


def test_scores_match_the_store_and_a_hand_computation(board: Leaderboard, store_url: str):
    stored = ResultStore(store_url).metrics_frame(
        dataset="synthetic",
        protocol="honest",
        selection="val",
        split_part="test",
        metric="score",
        shots_label="1",
        method="imagenet",
    )
    assert sorted(stored.value) == sorted(IMAGENET.values())
    row = cell(board, "imagenet")
    mean = (0.50 + 0.56 + 0.53) / 3
    std = math.sqrt(((0.50 - mean) ** 2 + (0.56 - mean) ** 2 + (0.53 - mean) ** 2) / 2)
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(mean)
    assert row["std"] == pytest.approx(std)
    assert row["ci95_low"] == pytest.approx(mean - T_975_DF2 * std / math.sqrt(3))
    assert row["ci95_high"] == pytest.approx(mean + T_975_DF2 * std / math.sqrt(3))
    assert row["oracle_mean"] == pytest.approx(mean + 0.02)  # the builder's oracle gain
    assert row["optimism"] == pytest.approx(0.02)
    assert cell(board, "simclr")["n"] == 4


def test_paired_comparison_excludes_unmatched_draws(board: Leaderboard):
    row = cell(board, "simclr")
    assert row["baseline"] == "imagenet"
    assert row["n_pairs"] == 3
    assert row["diff_mean"] == pytest.approx(((0.60 - 0.50) + (0.61 - 0.56) + (0.65 - 0.53)) / 3)
    assert row["signflip_p"] == pytest.approx(0.25)  # exact, n = 3, all positive
    assert row["signflip_p_floor"] == pytest.approx(0.25)
    # two tests in the table (simclr and scratch vs imagenet, both p = 0.25): Holm 2 × 0.25
    assert row["holm_p"] == pytest.approx(0.5)
    assert row["pair_diffs"] == "+0.100000; +0.050000; +0.120000"
    assert row["pair_draws"] == "default/draw 0; default/draw 1; default/draw 2"
    assert row["diff_t95_low"] < row["diff_mean"] < row["diff_t95_high"]
    assert row["mde80"] > 0 and pd.isna(row["diff_boot95_low"])  # 3 pairs: no bootstrap
    assert "draw 3" in row["excluded"] and "no imagenet run" in row["excluded"]
    paired = section(board, "synthetic", "honest").table("paired")
    assert "draw 3" in paired.note
    shown = paired.cells.loc["simclr, 1 shot"]
    assert shown["differences (pp)"] == "+10.00, +5.00, +12.00"
    assert shown["p (sign-flip)"] == "0.25 (min 0.25: cannot reach 0.05)"
    assert shown["95% CI (t), pp"].startswith("[")
    one_pair = paired.cells.loc["simclr, 4 shots"]  # n = 1: no interval and no test
    assert one_pair["95% CI (t), pp"] == one_pair["p (sign-flip)"] == "n=1: too few pairs"
    assert pd.isna(cell(board, "imagenet")["n_pairs"])  # the baseline is not compared with itself


def test_tables_mark_the_best_mean_and_state_n(board: Leaderboard):
    scores = section(board, "synthetic", "honest").table("score")
    assert list(scores.cells.index) == ["scratch", "imagenet", "simclr"]
    assert list(scores.cells.columns) == ["1 shot", "4 shots"]
    assert scores.cells.loc["imagenet", "1 shot"] == "53.00 ± 3.00 (n=3)"
    assert scores.cells.loc["scratch", "4 shots"] == "–"
    assert scores.cells.loc["simclr", "1 shot"] == simclr_one_shot()
    # simclr has the best means, but its 1-shot CI overlaps imagenet's and the 4-shot cells are
    # single draws: nothing is separated, so nothing is bold
    assert not scores.bold.to_numpy().any()
    assert "not separated" in scores.note
    per_class = section(board, "metaldam", "honest").table("per_class")
    assert list(per_class.cells.columns) == [
        "Matrix",
        "Austenite",
        "Martensite/Austenite",
        "Precipitate",
        "Defect",
    ]
    assert per_class.cells.loc["simclr, 1 shot", "Austenite"] == "80.0 (n=2)"
    assert per_class.cells.loc["simclr, 1 shot", "Precipitate"] == "–"  # NaN in every draw
    assert "Per-class IoU" in per_class.title
    dice = section(board, "synthetic", "pscl-paper").table("per_class")  # pscl-paper: Dice
    assert "Per-class Dice" in dice.title
    name = dice.cells.columns[1]  # class 1: its IoU in every run is the run's score
    shown = float(dice.cells.loc["imagenet, 1 shot", name].split()[0])
    assert shown == pytest.approx(
        100 * sum(2 * v / (1 + v) for v in IMAGENET.values()) / 3, abs=0.05
    )


def test_reported_rows_are_labelled_separate_and_only_where_they_match(board: Leaderboard):
    matssl = section(board, "metaldam", "matssl-paper")
    reported = matssl.table("reported")
    assert reported is not None and reported.reported
    assert all(label.startswith("reported, MatSSL paper: ") for label in reported.cells.index)
    assert "69.95" in reported.cells["all labeled"].tolist()
    assert not any("reported" in label for label in matssl.table("score").cells.index)
    for other in ("honest", "pscl-paper"):
        found = [s for s in board.sections if s.protocol == other]
        assert found and all(s.table("reported") is None for s in found)
    rows = board.cells[board.cells.kind == "reported"]
    assert set(rows.dataset) == {"metaldam"} and set(rows.protocol) == {"matssl-paper"}
    assert rows["n"].isna().all() and rows["std"].isna().all()
    assert rows.source.eq("MatSSL paper").all() and rows.citation.str.contains("2507.18184").all()


def test_files_are_written(board: Leaderboard, tmp_path: Path):
    paths = write_leaderboard(board, tmp_path)
    assert sorted(p.name for p in paths) == ["leaderboard.csv", "leaderboard.md", "leaderboard.tex"]
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| imagenet | 53.00 ± 3.00 (n=3) |" in md
    assert f"| simclr | {simclr_one_shot()} |" in md and "**" not in md.split("| simclr |")[1][:5]
    assert "_reported, MatSSL paper: MatSSL (SSL data Aachen+UHCS)_" in md
    tex = (tmp_path / "leaderboard.tex").read_text()
    assert r"\toprule" in tex
    assert simclr_one_shot().replace("±", r"$\pm$") in tex
    csv = pd.read_csv(tmp_path / "leaderboard.csv", dtype={"shots": str})
    assert len(csv) == len(board.cells)
    assert csv[
        (csv.method == "imagenet")
        & (csv.metric == "score")
        & (csv.protocol == "honest")
        & (csv.shots == "1")
        & (csv.dataset == "synthetic")
    ]["mean"].item() == pytest.approx(0.53)


def test_variants_get_their_own_rows_and_scratch_is_the_fallback_baseline(tmp_path: Path):
    store = sqlite_store(tmp_path)
    for draw in range(2):
        add_run(store, "scratch", 0.4 + draw / 100, draw=draw)
        add_run(store, "simclr", 0.5, draw=draw, params={"temperature": 0.1})
        add_run(store, "simclr", 0.6, draw=draw, params={"temperature": 0.5})
    board = build_leaderboard(load_results(store, protocol="honest"), load_reported())
    (only,) = board.sections
    assert only.baseline == "scratch"
    assert list(only.table("score").cells.index) == [
        "scratch",
        "simclr (temperature=0.1)",
        "simclr (temperature=0.5)",
    ]


def test_cli_writes_files_and_empty_store_exits_2(store_url: str, tmp_path: Path, cli):
    out = tmp_path / "out"
    code, stdout, _ = cli(
        ["leaderboard", "--store", store_url, "--dataset", "synthetic", "--out", out]
    )
    assert code == 0 and "sign-flip" in stdout
    assert (out / "leaderboard.md").stat().st_size > 0
    odd = tmp_path / "[fetch] out [/]"  # a folder name is printed as it is, never as markup
    code, stdout, _ = cli(["leaderboard", "--store", store_url, "--out", odd])
    assert code == 0 and f"wrote {odd / 'leaderboard.md'}" in stdout.replace("\n", "")
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    code, _, stderr = cli(["leaderboard", "--store", empty, "--out", tmp_path / "none"])
    assert code == 2 and "no succeeded runs" in stderr
    assert not (tmp_path / "none").exists()


def test_the_leaderboard_says_which_commits_its_runs_come_from() -> None:
    from bench.reporting.leaderboard import provenance_line

    clean = "0123456789abcdef0123456789abcdef01234567"
    assert provenance_line((clean,)) == "every run from one clean commit, `0123456789ab`."
    mixed = provenance_line((clean, "fedcba9876543210fedcba9876543210fedcba98-dirty"))
    assert mixed.startswith("runs from 2 commit(s), `0123456789ab`, `fedcba987654-dirty`")
    assert "1 with uncommitted changes" in mixed and "regenerate" in mixed
