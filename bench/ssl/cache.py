"""The pretraining cache: one verified, atomically published folder per pretraining.

Under ``<cache>/pretrain/``, for an entry named ``<method>-<hash>``:

- ``<name>/``: the complete entry: ``encoder.safetensors`` (``decoder.safetensors`` for methods
  that pretrain the decoder too) and ``model_card.json``, which records the config the hash was
  computed from, the compute it ran on, and the SHA-256 and tensor count of every weights file;
- ``<name>.work/``: the resume checkpoint of a pretraining in progress;
- ``<name>.lock``: the file lock concurrent processes wait on;
- ``<name>.tmp-*``: an entry being written; renamed to ``<name>`` in one step when complete, so a
  kill at any moment leaves either no entry or a complete one;
- ``<name>.bad-*``: an entry that failed verification, moved aside (kept for inspection).

An entry is used only after verification: the card is present and names this config, hash and
compute; every weights file has the recorded checksum, loads, holds only finite values and fits
the network strictly. A complete, valid entry is read without taking the lock, so a read-only
cache stays usable; anything that must write to an unwritable cache is a one-line ``BenchError``
naming the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bench.core.console import err_console
from bench.core.errors import BenchError
from bench.models.encoders import build_encoder, load_strict
from bench.models.segmenter import (
    ARCHS,
    PretrainedWeights,
    create_segmenter,
    load_pretrained,
)

ENCODER_FILE = "encoder.safetensors"
DECODER_FILE = "decoder.safetensors"
CARD_FILE = "model_card.json"


class BadEntry(Exception):
    """A cache entry that fails verification (the message says why)."""


@dataclass(frozen=True)
class Expected:
    """What a valid entry must say about itself."""

    hash: str
    config: dict[str, Any]
    compute: dict[str, Any]
    encoder: str


def note(message: str) -> None:
    """One line on stderr, never wrapped."""
    err_console.print(message, soft_wrap=True, markup=False, highlight=False)


def unwritable(folder: Path, exc: OSError, why: str = "") -> BenchError:
    return BenchError(
        f"pretraining cache {folder} is not writable ({exc.strerror or exc}){why}; point "
        "--cache-dir or $BENCH_CACHE_DIR at a writable folder"
    )


class CacheEntry:
    """The files of one pretraining in the cache (module docstring)."""

    def __init__(self, root: Path, name: str, expected: Expected) -> None:
        self.root, self.name, self.expected = root, name, expected
        self.folder = root / name
        self.work = root / f"{name}.work"

    def load(self) -> PretrainedWeights | None:
        """The verified weights; None when there is no entry; ``BadEntry`` when it is invalid."""
        if not self.folder.exists():
            return None
        return verify(self.folder, self.expected)

    def card(self) -> dict[str, Any]:
        return json.loads((self.folder / CARD_FILE).read_text())

    @contextlib.contextmanager
    def locked(self, bad: str | None = None) -> Iterator[None]:
        """Hold the entry's lock (creating the cache folders); unwritable: BenchError, which says
        the entry is ``bad`` when that is why it must be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.root / f"{self.name}.lock"))
            lock.acquire()
        except OSError as exc:
            why = f" to replace the bad entry {self.folder} ({bad})" if bad else ""
            raise unwritable(self.root, exc, why) from None
        try:
            yield
        finally:
            lock.release()

    def work_folder(self) -> Path:
        try:
            self.work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unwritable(self.root, exc) from None
        return self.work

    def move_aside(self, reason: str) -> None:
        """Rename the bad entry to ``<name>.bad-<time>`` with a one-line note (lock held)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = self.root / f"{self.name}.bad-{stamp}-{secrets.token_hex(2)}"
        try:
            os.rename(self.folder, aside)
        except OSError as exc:
            raise unwritable(self.root, exc) from None
        note(f"note: pretraining cache entry {self.folder} is bad ({reason}); moved to {aside}")

    def publish(self, weights: PretrainedWeights, card: dict[str, Any]) -> None:
        """Write the weights and their card into a temporary folder, then rename it into place."""
        tmp = self.root / f"{self.name}.tmp-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            files = {ENCODER_FILE: weights.encoder}
            if weights.decoder is not None:
                files[DECODER_FILE] = weights.decoder
            card = {**card, "files": {}}
            for file_name, state in files.items():
                save_file(state, str(tmp / file_name))
                card["files"][file_name] = {
                    "sha256": sha256_file(tmp / file_name),
                    "tensors": len(state),
                }
            _write_synced(tmp / CARD_FILE, json.dumps(card, indent=2))
            for file_name in files:
                _fsync(tmp / file_name)
            os.rename(tmp, self.folder)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise unwritable(self.root, exc) from None
        shutil.rmtree(self.work, ignore_errors=True)
        for stale in self.root.glob(f"{self.name}.tmp-*"):  # left by killed writers
            shutil.rmtree(stale, ignore_errors=True)


def verify(folder: Path, expected: Expected) -> PretrainedWeights:
    """The entry's weights after every check in the module docstring; ``BadEntry`` otherwise."""
    try:
        card = json.loads((folder / CARD_FILE).read_text())
    except FileNotFoundError:
        raise BadEntry(f"no {CARD_FILE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadEntry(f"{CARD_FILE} is not readable JSON: {exc}") from None
    if not isinstance(card, dict):
        raise BadEntry(f"{CARD_FILE} is not a JSON object")
    for key, want in (
        ("hash", expected.hash),
        ("config", _json(expected.config)),
        ("compute", expected.compute),
    ):
        if card.get(key) != want:
            raise BadEntry(f"{CARD_FILE} has another {key} than this pretraining")
    files = card.get("files")
    if not isinstance(files, dict) or ENCODER_FILE not in files:
        raise BadEntry(f"{CARD_FILE} lists no {ENCODER_FILE}")
    if DECODER_FILE in files and card.get("arch") not in ARCHS:
        raise BadEntry(f"{CARD_FILE} lists a decoder without a known architecture")
    states = {name: _load_checked(folder / name, info) for name, info in files.items()}
    weights = PretrainedWeights(states[ENCODER_FILE], states.get(DECODER_FILE), card.get("arch"))
    _check_fit(weights, expected.encoder)
    return weights


def _load_checked(path: Path, info: Any) -> dict[str, torch.Tensor]:
    if path.name not in (ENCODER_FILE, DECODER_FILE) or not isinstance(info, dict):
        raise BadEntry(f"{CARD_FILE} lists an unexpected file entry {path.name}")
    if not path.is_file():
        raise BadEntry(f"{path.name} is missing")
    if sha256_file(path) != info.get("sha256"):
        raise BadEntry(f"{path.name} does not match the checksum in {CARD_FILE}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadEntry(f"{path.name} cannot be read: {exc}") from None
    if len(state) != info.get("tensors"):
        raise BadEntry(f"{path.name} holds {len(state)} tensors, the card says {info['tensors']}")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise BadEntry(f"{path.name}: tensor {key} holds NaN or infinite values")
    return state


def _check_fit(weights: PretrainedWeights, encoder: str) -> None:
    """Keys and shapes: the weights load strictly into a fresh network."""
    try:
        if weights.decoder is None:
            load_strict(build_encoder(encoder), weights.encoder, f"{encoder} encoder")
        else:
            arch = str(weights.arch)
            load_pretrained(create_segmenter(arch, encoder, 1), weights, arch, encoder)
    except (BenchError, KeyError, ValueError) as exc:
        raise BadEntry(str(exc)) from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _write_synced(path: Path, text: str) -> None:
    with path.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())
