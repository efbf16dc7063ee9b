"""README's "Get the data" and "Your own dataset" commands, run as written against local fixtures.

Fetching uses the real cards with their real URLs, served by a server on 127.0.0.1 (``--base-url``)
with a tiny fake release whose checksums replace the real ones (as in ``tests/data/test_fetch.py``).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import cards as card_module
from tests.data.test_fetch import _fake_ebc, _fake_metaldam
from tests.helpers.http import FileServer

README = Path(__file__).resolve().parents[1] / "README.md"
CONTRIBUTING = README.with_name("CONTRIBUTING.md")


def section_commands(title: str) -> list[list[str]]:
    """The ``python -m bench`` commands in the bash blocks of README section ``## title``."""
    text = README.read_text()
    body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("python -m bench "):
                commands.append(shlex.split(line)[3:])
    assert commands, f"README section {title!r} has no commands"
    return commands


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FileServer]:
    with FileServer(tmp_path / "served") as served:
        yield served


def test_get_the_data_commands_work_against_a_local_server(
    cli, server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for sub in ("fake-metaldam", "fake-ebc"):
        (tmp_path / sub).mkdir()
    metaldam, _ = _fake_metaldam(server, tmp_path / "fake-metaldam")
    assert metaldam.unlabeled is not None  # the real exclusion names a frame the fake lacks
    metaldam = dataclasses.replace(
        metaldam, unlabeled=dataclasses.replace(metaldam.unlabeled, exclude=())
    )
    ebc, _ = _fake_ebc(server, tmp_path / "fake-ebc")
    fakes = {"metaldam": metaldam, **ebc}
    real_load = card_module.load_card
    monkeypatch.setattr(
        card_module, "load_card", lambda name, *a, **k: fakes.get(name) or real_load(name, *a, **k)
    )
    monkeypatch.chdir(tmp_path)
    data_root = tmp_path / "datasets"
    commands = section_commands("Get the data")
    assert [c[:2] for c in commands[:4]] == [
        ["data", "list"],
        ["data", "fetch"],
        ["data", "fetch"],
        ["data", "check"],
    ]
    for argv in commands:
        extra = ["--data-root", str(data_root)] if argv[0] in ("data", "run") else []
        if argv[:2] == ["data", "fetch"]:
            extra += ["--base-url", server.url]
        code, out, err = cli([*argv, *extra])
        if argv[:2] == ["data", "list"]:
            assert "metaldam" in out  # nothing fetched yet: listed as absent
            continue
        assert code == 0, (argv, out, err)
    assert (data_root / "metaldam" / "splits").is_dir()
    assert (data_root / "nasa_micronet" / "EBC").is_dir()
    code, out, _ = cli(["data", "list", "--data-root", str(data_root)])
    metaldam_row = next(line for line in out.splitlines() if "metaldam" in line)
    assert "yes" in metaldam_row, out


def _write_own_dataset(root: Path) -> None:
    """Images, masks, split lists and an unlabeled pool in the minimal card's layout."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "unlabeled"):
        (root / sub).mkdir(parents=True)
    stems = [f"m{i}" for i in range(8)]
    for stem in stems:
        mask = np.zeros((64, 64), np.uint8)
        y, x = rng.integers(8, 40, 2)
        mask[y : y + 16, x : x + 16] = 1
        image = (80 + 120 * mask + rng.normal(0, 10, mask.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    for j in range(4):
        noise = rng.integers(0, 255, (64, 64)).astype(np.uint8)
        Image.fromarray(noise).save(root / "unlabeled" / f"u{j}.png")
    (root / "train.txt").write_text("\n".join(stems[:6]) + "\n")
    (root / "test.txt").write_text("\n".join(stems[6:]) + "\n")


def test_your_own_dataset_commands_work(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    card = CONTRIBUTING.read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my-cards").mkdir()
    (tmp_path / "my-cards" / "mine.toml").write_text(card)
    _write_own_dataset(tmp_path / "my-data" / "mine")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for argv in section_commands("Your own dataset"):
            code, out, err = cli(argv)
            assert code == 0, (argv, out, err)
    finally:
        torch.set_num_threads(threads)
    assert "matrix" in out and "precipitate" in out  # the run's per-class table
