"""The few-shot protocol: test / validation / shot pool per split, and nested seeded draws.

- test: the split's test list, used only for final evaluation (and the labelled oracle score);
- validation: the split's val list, or a fixed held-out part of train (``val_holdout``);
- pool: the rest of train; shots are drawn from it.

A draw is an order of the pool; ``N`` shots are its first ``N`` images, so the draw of ``N`` is
contained in the draw of ``2N`` with the same draw id. Draw ``d`` of a pool of ``n`` images reads a
seeded permutation ``P`` of the pool at positions ``d + o_i (mod n)``, where ``o`` spreads over the
pool (0, n/2, n/4, 3n/4, … : a van der Corput sequence): every draw is a uniformly random subset,
the first ``n`` draws start with ``n`` distinct images, and ``K`` draws of ``N`` shots share no
image while ``K·N`` is at most about ``n``. Draws ``d ≥ n`` use another permutation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError
from bench.data.cards import DatasetCard
from bench.data.sources import source_for


@dataclass(frozen=True)
class Partition:
    pool: list[str]
    val: list[str]
    test: list[str]


def stable_seed(*parts: object) -> int:
    """A 32-bit seed derived from the given values, identical on every machine and run."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def partition(card: DatasetCard, data_root: Path, split: str | None = None) -> Partition:
    """Test, validation and shot pool of ``split`` (default: the card's); overlapping lists are a
    BenchError."""
    source = source_for(card, data_root)
    split = source.split_name(split)
    lists = source.split_lists(split)
    train, test = lists.train, lists.test
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise BenchError(f"{lists.files['test']}: test images also in train: {', '.join(overlap)}")
    if lists.val is not None:
        val = lists.val
        leaked = sorted(set(val) & set(test))
        if leaked:
            raise BenchError(
                f"{lists.files['val']}: validation images also in test: {', '.join(leaked)}"
            )
        pool = [s for s in train if s not in set(val)]
    else:
        holdout = card.split(split).val_holdout
        assert holdout is not None
        if holdout >= len(train):
            raise BenchError(
                f"{card.path}: split '{split}' holds out {holdout} of only {len(train)} train "
                "images for validation"
            )
        order = np.random.default_rng(stable_seed(card.name, split, "val")).permutation(len(train))
        held = set(order[:holdout].tolist())
        val = [s for i, s in enumerate(train) if i in held]
        pool = [s for i, s in enumerate(train) if i not in held]
    return Partition(pool=pool, val=val, test=test)


def parse_shots(text: str) -> int | None:
    """``"4"`` → 4, ``"all"`` → None (the whole pool)."""
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise BenchError(f"--shots takes positive integers or 'all', got '{text}'")
    return int(text)


def draw_shots(pool: list[str], shots: int | None, draw: int, key: str) -> list[str]:
    """The images of draw ``draw``: a prefix of a permutation seeded by (key, draw)."""
    if shots is None:
        return list(pool)
    if shots > len(pool):
        raise BenchError(
            f"--shots {shots} is more than the {len(pool)} images available for shots in {key} "
            f"(train minus validation); use --shots all for the whole pool"
        )
    n = len(pool)
    cycle, start = divmod(draw, n)
    perm = np.random.default_rng(stable_seed(key, "draws", cycle)).permutation(n)
    return [pool[perm[(start + o) % n]] for o in spread_offsets(n)[:shots]]


def spread_offsets(n: int) -> list[int]:
    """0..n-1 in van der Corput order scaled to ``n`` (0, n/2, n/4, 3n/4, …): each prefix is
    spread as evenly as possible over the pool."""
    bits = max(1, (n - 1).bit_length())
    seen: dict[int, None] = {}
    for k in range(1 << bits):
        reversed_k = int(f"{k:0{bits}b}"[::-1], 2)
        seen.setdefault(reversed_k * n >> bits, None)
    return list(seen)
