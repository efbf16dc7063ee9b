"""User text is printed as it is: never read as rich markup (errors, checks, progress labels)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.core.console import err_console, progress, say
from bench.data.cards import CARDS_ENV

CARD = """
name = "odd"
title = "a [bold]title[/] with [fetch] in it"
root = "odd[/]root"
[classes]
ids = [0, 1]
names = ["a", "[/]"]
colors = [[0, 0, 0], [1, 1, 1]]
[layout]
images = "images/{stem}.png"
masks = "masks/{stem}.png"
[splits.s]
train = "train.txt"
test = "test.txt"
val_holdout = 1
"""


def _cards(tmp_path: Path) -> Path:
    folder = tmp_path / "cards [/] [fetch]"
    folder.mkdir(parents=True)
    (folder / "odd.toml").write_text(CARD)
    return folder


def test_errors_keep_section_names_and_survive_closing_tags(cli, tmp_path: Path) -> None:
    folder = _cards(tmp_path)
    try:
        code, _, err = cli(["data", "fetch", "odd", "--cards", str(folder)])
    finally:
        os.environ.pop(CARDS_ENV, None)
    assert code == 2
    assert "has no [fetch] table" in err
    assert "cards [/] [fetch]" in " ".join(err.split())


def test_check_and_list_print_paths_and_titles_verbatim(cli, tmp_path: Path) -> None:
    folder = _cards(tmp_path)
    data = tmp_path / "data [/]"
    (data / "odd[/]root").mkdir(parents=True)
    try:
        code, out, _ = cli(
            ["data", "check", "odd", "--cards", str(folder), "--data-root", str(data)]
        )
        assert code == 1 and "odd[/]root/train.txt: split list missing" in out
        code, out, _ = cli(["data", "list", "--cards", str(folder), "--data-root", str(data)])
    finally:
        os.environ.pop(CARDS_ENV, None)
    assert "a [bold]title[/] with [fetch] in it" in out and "[/]" in out


def test_say_and_progress_show_values_verbatim(capsys) -> None:
    say("[green]ok[/] {}", "[red]x[/] [/]")
    assert "ok [red]x[/] [/]" in capsys.readouterr().out
    with err_console.capture() as captured, progress("loss") as bar:
        task = bar.add_task("simclr [/] [fetch]", total=1, loss="[b]0.5")
        bar.advance(task)
    assert "simclr [/] [fetch]" in captured.get() and "[b]0.5" in captured.get()
