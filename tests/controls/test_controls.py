"""The controls end to end at CI size: the command writes its files; pretraining on generated
micrographs beats random init and beats the same pretraining on noise."""

from __future__ import annotations

import json

from tests.test_cli import assert_user_error

SMALL = ["--draws", 6, "--pool", 160, "--steps", 20, "--test", 3]


def test_controls_find_the_known_directions(cli, tmp_path) -> None:
    code, out, err = cli(["controls", *SMALL, "--threads", 1, "--out", tmp_path])
    data = json.loads((tmp_path / "controls.json").read_text())
    rows = {row["control"]: row for row in data["controls"]}
    assert list(rows) == ["positive", "negative", "structure"]
    assert all(row["n_draws"] == 6 for row in rows.values())
    positive, negative, structure = rows["positive"], rows["negative"], rows["structure"]
    assert positive["mean_diff"] > 0 and positive["ci95"][0] < positive["mean_diff"]
    assert structure["mean_diff"] > 0  # micrographs teach more than noise at the same budget
    # the negative control's verdict follows its rule (at full size it fails: see README, Controls)
    assert negative["passed"] == (not (negative["p"] < 0.05 and negative["mean_diff"] > 0))
    scores = data["scores"]
    assert len({tuple(d) for d in data["draws"]}) == 6 and set(scores) == {
        "random init",
        "positive",
        "negative",
    }
    assert (tmp_path / "controls.md").read_text().count("| positive |") == 1
    assert (tmp_path / "controls.png").read_bytes()[:4] == b"\x89PNG"
    assert code == (0 if all(row["passed"] for row in rows.values()) else 1), err
    assert "positive: Δ mIoU" in out


def test_too_few_draws_is_a_one_line_error(cli, tmp_path) -> None:
    code, out, err = cli(["controls", "--draws", 4, "--out", tmp_path])
    assert_user_error(code, out, err, "--draws 4", "≥ 6 draws")
    assert not (tmp_path / "controls.json").exists()
