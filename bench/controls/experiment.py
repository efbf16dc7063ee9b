"""Run both controls: pretrain, then probe every encoder on the same shot draws.

One starting encoder (random init, ``init_seed``) is the baseline of both controls and the start of
both pretrainings; a draw is a set of ``shots`` labeled images of the evaluation card's training
part (no two draws the same set), and every encoder is probed on it with the same seed, so the
per-draw differences isolate what the pretraining data changed. The population the test speaks
about is shot draws and probe seeds, for one pretraining of each control.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bench.controls.paired import PairedTest, paired_test
from bench.controls.pools import evaluation_card, noise_pool, part, structured_pool
from bench.controls.pretrain import PretrainSettings, pretrain_supervised
from bench.data.images import LabeledImage
from bench.finetune.probe import ProbeConfig, probe
from bench.models.encoders import build_encoder, load_strict

BASELINE = "random init"


@dataclass(frozen=True)
class ControlsConfig:
    """Sizes of one controls run (the command's options)."""

    draws: int = 10
    shots: int = 2
    size: int = 128
    """Side of every generated image (the working scale: native pixels)."""
    shot_pool: int = 24
    val: int = 3
    test: int = 6
    pool: int = 1200
    """Images of each pretraining pool (structured and noise); steps × batch size: each once."""
    noise: str = "white"
    """The negative control's noise (``bench.controls.pools.noise_pool``): white or spectral."""
    encoder: str = "resnet18"
    init_seed: int = 0
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass(frozen=True)
class Control:
    """One paired comparison of probe scores, ``treated − baseline``, and what it must show."""

    name: str
    treated: str
    baseline: str
    expect: str
    """``better``: significantly above the baseline; ``not better``: not significantly above."""

    def passed(self, test: PairedTest) -> bool:
        above = test.significant and test.mean_diff > 0
        return above if self.expect == "better" else not above


POOLS = {"positive": "structured", "negative": "noise"}
"""The pretrained encoders, by the pool they are pretrained on."""
CONTROLS = (
    Control("positive", "positive", BASELINE, "better"),
    Control("negative", "negative", BASELINE, "not better"),
    Control("structure", "positive", "negative", "better"),
)
"""The positive and negative controls, and what structured data adds over noise at the same
budget (``structure``: the pretraining effect net of any effect of training as such)."""


@dataclass(frozen=True)
class ControlsOutcome:
    config: ControlsConfig
    draws: list[tuple[str, ...]]
    """The shot stems of each draw."""
    scores: dict[str, list[float]]
    """Probe mIoU (honest protocol, validation-selected step) per draw: ``BASELINE`` and each
    pretrained encoder (``POOLS``)."""
    tests: dict[str, PairedTest]


Announce = Callable[[str], None]


def run_controls(
    cfg: ControlsConfig, device: torch.device, announce: Announce = lambda _: None
) -> ControlsOutcome:
    card = evaluation_card(cfg.size, cfg.shot_pool, cfg.val, cfg.test)
    shot_pool, val, test = part(card, "train"), part(card, "val"), part(card, "test")
    draws = shot_draws(shot_pool, cfg.shots, cfg.draws)
    torch.manual_seed(cfg.init_seed)
    start = build_encoder(cfg.encoder)
    structured = structured_pool(cfg.pool, cfg.size)
    pools = {"structured": structured, "noise": noise_pool(structured, cfg.noise)}
    encoders: dict[str, nn.Module] = {BASELINE: start}
    for name, pool in POOLS.items():
        announce(f"pretraining the {name} control on the {pool} pool ({len(pools[pool])} images)")
        state = pretrain_supervised(
            start, pools[pool], card.num_classes, cfg.pretrain, cfg.init_seed, f"pretrain {pool}"
        )
        encoder = build_encoder(cfg.encoder)
        load_strict(encoder, state, f"{cfg.encoder} encoder")
        encoders[name] = encoder
    scores: dict[str, list[float]] = {name: [] for name in encoders}
    for d, shots in enumerate(draws):
        announce(f"draw {d + 1}/{len(draws)}: shots {', '.join(s.stem for s in shots)}")
        for name, encoder in encoders.items():
            result = probe(
                encoder, shots, val, test, card, "card", cfg.probe, device, seed=d, label=name
            )
            scores[name].append(float(result.selected.test["honest"].score))
    tests = {c.name: paired_test(scores[c.treated], scores[c.baseline]) for c in CONTROLS}
    stems = [tuple(s.stem for s in shots) for shots in draws]
    return ControlsOutcome(cfg, stems, scores, tests)


def shot_draws(pool: list[LabeledImage], shots: int, draws: int) -> list[list[LabeledImage]]:
    """``draws`` distinct sets of ``shots`` images of ``pool`` (seeded; the same every run)."""
    combos = list(itertools.combinations(range(len(pool)), shots))
    if len(combos) < draws:
        raise ValueError(
            f"{len(pool)} training images give {len(combos)} distinct {shots}-shot draws, "
            f"fewer than the {draws} asked for"
        )
    order = np.random.default_rng(0).permutation(len(combos))[:draws]
    return [[pool[i] for i in combos[k]] for k in order]
