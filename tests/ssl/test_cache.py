"""The pretraining cache under faults: every corruption is detected, moved aside and recomputed;
a planted pickle never runs; a kill during the write never leaves a usable-looking entry; a
read-only cache with a complete entry still works, an unwritable one is a one-line error."""

from __future__ import annotations

import builtins
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import bench.ssl.engine as engine
from bench.core.errors import BenchError
from bench.ssl.cache import CARD_FILE, ENCODER_FILE, BadEntry, sha256_file, verify
from bench.ssl.checkpoint import CHECKPOINT_FILE, BadCheckpoint, load_checkpoint
from bench.ssl.registry import get_method
from tests.helpers.paths import REPO
from tests.helpers.ssl import synthetic_context

TINY = {"steps": 2, "batch_size": 4, "view_size": 64, "pool_limit": 8}


def _method():
    return get_method("simclr")(TINY)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding one complete smoke pretraining."""
    cache = tmp_path_factory.mktemp("trained")
    engine.pretrain_encoder(_method(), synthetic_context(cache))
    return cache


@pytest.fixture
def cache(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained cache."""
    copy = tmp_path / "cache"
    shutil.copytree(trained, copy)
    return copy


def _entry(cache: Path):
    return engine.cache_entry(_method(), synthetic_context(cache))


def _rewrite_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Replace the encoder file and record its new checksum in the card (a consistent card, so
    only the deeper checks can catch the weights)."""
    save_file(state, str(folder / ENCODER_FILE))
    card = json.loads((folder / CARD_FILE).read_text())
    card["files"][ENCODER_FILE] = {
        "sha256": sha256_file(folder / ENCODER_FILE),
        "tensors": len(state),
    }
    (folder / CARD_FILE).write_text(json.dumps(card))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_weights(folder: Path) -> None:
    state = load_file(str(folder / ENCODER_FILE))
    state["conv1.weight"] = state["conv1.weight"].clone().fill_(float("nan"))
    _rewrite_weights(folder, state)


def _wrong_keys(folder: Path) -> None:
    state = load_file(str(folder / ENCODER_FILE))
    state["conv9.weight"] = state.pop("conv1.weight")
    _rewrite_weights(folder, state)


def _random_weights(folder: Path) -> None:  # the card is left as it was
    state = load_file(str(folder / ENCODER_FILE))
    noise = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in state.items()}
    save_file(noise, str(folder / ENCODER_FILE))


def _other_config(folder: Path) -> None:
    card = json.loads((folder / CARD_FILE).read_text())
    card["config"]["engine"]["lr"] = 123.0
    (folder / CARD_FILE).write_text(json.dumps(card))


CORRUPTIONS = {
    "truncated encoder": (lambda f: _truncate(f / ENCODER_FILE), "checksum"),
    "empty encoder": (lambda f: (f / ENCODER_FILE).write_bytes(b""), "checksum"),
    "missing encoder": (lambda f: (f / ENCODER_FILE).unlink(), "missing"),
    "missing card": (lambda f: (f / CARD_FILE).unlink(), "no model_card.json"),
    "bad card": (lambda f: (f / CARD_FILE).write_text("{not json"), "not readable JSON"),
    "card of another config": (_other_config, "another config"),
    "NaN weights": (_nan_weights, "NaN or infinite"),
    "wrong keys": (_wrong_keys, "do not fit"),
    "random finite weights": (_random_weights, "checksum"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_fails_verification_with_its_reason(cache: Path, name: str) -> None:
    entry = _entry(cache)
    verify(entry.folder, entry.expected)  # the intact entry passes
    corrupt, reason = CORRUPTIONS[name]
    corrupt(entry.folder)
    with pytest.raises(BadEntry, match=reason):
        verify(entry.folder, entry.expected)


def test_a_bad_entry_is_moved_aside_and_recomputed_with_a_note(cache: Path, capsys) -> None:
    entry = _entry(cache)
    original = load_file(str(entry.folder / ENCODER_FILE))
    _random_weights(entry.folder)
    result = engine.pretrain_encoder(_method(), synthetic_context(cache))
    assert not result.cached
    notes = [line for line in capsys.readouterr().err.splitlines() if "is bad" in line]
    assert len(notes) == 1 and "checksum" in notes[0] and str(entry.folder) in notes[0]
    aside = list(entry.root.glob(f"{entry.name}.bad-*"))
    assert len(aside) == 1 and (aside[0] / ENCODER_FILE).is_file()  # kept for inspection
    # recomputed: the same seed on the same compute gives the original weights back
    verify(entry.folder, entry.expected)
    assert all(torch.equal(result.weights.encoder[k], v) for k, v in original.items())


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: a folder appears if the pickle runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _malicious(path: Path, marker: Path) -> None:
    torch.save({"step": _Payload(marker)}, path)


CHECKPOINTS = {
    "malicious pickle": r"refused: not a weights-only checkpoint \(.*GLOBAL \w+\.mkdir",
    "truncated": r"unreadable",
    "random bytes": r"refused|unreadable",
}


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_a_bad_resume_checkpoint_is_refused_and_nothing_runs(
    tmp_path: Path, capsys, kind: str
) -> None:
    ctx = synthetic_context(tmp_path / "cache")
    entry = engine.cache_entry(_method(), ctx)
    entry.work_folder()
    checkpoint, marker = entry.work / CHECKPOINT_FILE, tmp_path / "pwned"
    if kind == "malicious pickle":
        _malicious(checkpoint, marker)
        torch.load(tmp_path_copy(checkpoint, tmp_path), weights_only=False)  # the payload is live
        assert marker.is_dir()
        marker.rmdir()
    elif kind == "truncated":
        torch.save({"step": 1, "model": {"w": torch.ones(1000)}}, checkpoint)
        _truncate(checkpoint)
    else:
        checkpoint.write_bytes(random.Random(0).randbytes(4096))
    result = engine.pretrain_encoder(_method(), ctx)
    assert not marker.exists()
    notes = [line for line in capsys.readouterr().err.splitlines() if "resume checkpoint" in line]
    assert len(notes) == 1 and re.search(CHECKPOINTS[kind], notes[0]) and "starts over" in notes[0]
    assert not result.cached and len(result.losses) == TINY["steps"]  # trained from scratch
    verify(entry.folder, entry.expected)


def test_any_garbage_checkpoint_is_a_bad_checkpoint(tmp_path: Path) -> None:
    """Random bytes make torch's weights-only unpickler fail in many ways (UnpicklingError,
    IndexError, ...): every one is a ``BadCheckpoint``, never a traceback."""
    path = tmp_path / CHECKPOINT_FILE
    for seed in range(40):
        rng = random.Random(seed)
        data = rng.randbytes(rng.randrange(1, 2048))
        if seed % 2:  # a valid zip header with garbage behind it
            torch.save({"step": 1}, path)
            data = path.read_bytes()[:64] + data
        path.write_bytes(data)
        with pytest.raises(BadCheckpoint):
            load_checkpoint(path)
    torch.save({"step": 1}, path)  # a readable file that is not a pretraining checkpoint
    with pytest.raises(BadCheckpoint, match="not a pretraining checkpoint"):
        load_checkpoint(path)


def tmp_path_copy(path: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.pt"
    shutil.copyfile(path, copy)
    return copy


KILLED_WRITER = """
import os, sys, time
from pathlib import Path
import bench.ssl.cache as cache
from bench.ssl.engine import pretrain_encoder
from bench.ssl.registry import get_method
from tests.helpers.ssl import synthetic_context

root, ready = Path(sys.argv[1]), Path(sys.argv[2])
real_save = cache.save_file

def save_then_wait(state, path):  # the encoder file is on disk, the card not yet
    real_save(state, path)
    ready.write_text(path)
    time.sleep(120)

cache.save_file = save_then_wait
pretrain_encoder(get_method("simclr")(TINY), synthetic_context(root))
""".replace("TINY", repr(TINY))


def test_a_kill_during_the_cache_write_leaves_no_entry_and_the_next_run_recomputes(
    tmp_path: Path,
) -> None:
    """A real SIGKILL of a process inside the write window (weights written, card not)."""
    root, ready = tmp_path / "cache", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(root), str(ready)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the writer never reached the write window"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    entry = engine.cache_entry(_method(), synthetic_context(root))
    assert Path(ready.read_text()).parent.name.startswith(f"{entry.name}.tmp-")
    assert not entry.folder.exists()  # no half entry under the real name
    result = engine.pretrain_encoder(_method(), synthetic_context(root))
    assert not result.cached
    verify(entry.folder, entry.expected)
    assert not list(entry.root.glob(f"{entry.name}.tmp-*"))  # the killed writer's folder is gone


def _read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Any write under ``root`` fails with EACCES, as on a read-only mount (also as root)."""
    inside = str(root.resolve())

    def guarded(real, flags_of):
        def call(path, *args, **kwargs):
            named = isinstance(path, (str, os.PathLike))
            if named and str(Path(path).resolve()).startswith(inside) and flags_of(args, kwargs):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        return call

    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    monkeypatch.setattr(os, "open", guarded(os.open, lambda a, k: bool(a[0] & writes)))
    monkeypatch.setattr(os, "mkdir", guarded(os.mkdir, lambda a, k: True))
    monkeypatch.setattr(os, "rename", guarded(os.rename, lambda a, k: True))
    mode = lambda a, k: any(c in (a[0] if a else k.get("mode", "r")) for c in "wax+")  # noqa: E731
    monkeypatch.setattr(builtins, "open", guarded(builtins.open, mode))
    monkeypatch.setattr(io, "open", guarded(io.open, mode))


def test_a_complete_read_only_cache_stays_usable(cache: Path, monkeypatch) -> None:
    entry = _entry(cache)
    (entry.root / f"{entry.name}.lock").unlink()  # a copied cache may lack the lock file too
    before = sorted(p.name for p in entry.root.iterdir())
    _read_only(monkeypatch, cache)
    result = engine.pretrain_encoder(_method(), synthetic_context(cache))
    assert result.cached and result.weights.encoder
    assert sorted(p.name for p in entry.root.iterdir()) == before  # nothing written, no lock


def test_an_unwritable_cache_is_one_line_naming_the_folder(tmp_path: Path, monkeypatch) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    with pytest.raises(BenchError) as info:
        engine.pretrain_encoder(_method(), synthetic_context(blocked))
    message = str(info.value)
    assert (
        "\n" not in message and str(blocked / "pretrain") in message and "not writable" in message
    )

    empty = tmp_path / "read-only"
    empty.mkdir()
    _read_only(monkeypatch, empty)
    with pytest.raises(BenchError, match=f"pretraining cache {empty / 'pretrain'} is not writable"):
        engine.pretrain_encoder(_method(), synthetic_context(empty))


def test_a_bad_entry_in_a_read_only_cache_is_one_line_naming_the_folder(
    cache: Path, monkeypatch
) -> None:
    entry = _entry(cache)
    _random_weights(entry.folder)
    _read_only(monkeypatch, cache)
    with pytest.raises(BenchError, match="is not writable") as info:
        engine.pretrain_encoder(_method(), synthetic_context(cache))
    message = str(info.value)
    assert "\n" not in message and str(entry.root) in message
    assert f"to replace the bad entry {entry.folder}" in message and "checksum" in message
