"""The controls end to end at CI size: the command writes its files; pretraining on generated
micrographs beats random init and beats the same pretraining on noise; each verdict follows its
rule; the comparison of training as such carries none."""

from __future__ import annotations

import json

from tests.test_cli import assert_user_error

SMALL = ["--draws", 6, "--pool", 160, "--steps", 20, "--test", 3]


def test_controls_find_the_known_directions(cli, tmp_path) -> None:
    code, out, err = cli(["controls", *SMALL, "--threads", 1, "--out", tmp_path])
    data = json.loads((tmp_path / "controls.json").read_text())
    rows = {row["control"]: row for row in data["controls"]}
    assert list(rows) == ["positive", "structure", "negative", "training"]
    assert all(row["n_draws"] == 6 for row in rows.values())
    positive, structure = rows["positive"], rows["structure"]
    negative, training = rows["negative"], rows["training"]
    assert positive["mean_diff"] > 0 and positive["ci95"][0] < positive["mean_diff"]
    assert structure["mean_diff"] > 0  # micrographs teach more than noise at the same budget
    assert negative["baseline"].endswith("white-noise images")
    assert "other white-noise images" in negative["method"]
    assert negative["passed"] == (negative["p"] >= 0.05)  # two-sided: no difference either way
    assert training["passed"] is None and training["expect"] == "measured"
    scores = data["scores"]
    assert len({tuple(d) for d in data["draws"]}) == 6 and set(scores) == {
        "random init",
        "structured",
        "noise",
        "noise repeat",
    }
    assert scores["noise"] != scores["noise repeat"]  # two pretrainings, not one copied
    markdown = (tmp_path / "controls.md").read_text()
    assert markdown.count("| positive |") == 1 and "| measured | — |" in markdown
    assert (tmp_path / "controls.png").read_bytes()[:4] == b"\x89PNG"
    failed = [row["control"] for row in rows.values() if row["passed"] is False]
    assert code == (1 if failed else 0), err
    assert "positive: Δ mIoU" in out


def test_too_few_draws_is_a_one_line_error(cli, tmp_path) -> None:
    code, out, err = cli(["controls", "--draws", 4, "--out", tmp_path])
    assert_user_error(code, out, err, "--draws 4", "≥ 6 draws")
    assert not (tmp_path / "controls.json").exists()
