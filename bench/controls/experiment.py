"""Run the controls: pretrain, then probe every encoder on the same shot draws.

One starting encoder (random init, ``init_seed``) is the start of every pretraining: on generated
micrographs (``structured``), on pure noise (``noise``), and on a second, independent draw of the
same noise (``noise repeat``), each with the same recipe, budget and seed. A draw is a set of
``shots`` labeled images of the evaluation card's training part (no two draws the same set), and
every encoder is probed on it with the same seed, so the per-draw differences isolate what the
pretraining data changed. The population the test speaks about is shot draws and probe seeds, for
one pretraining of each encoder.

Why the negative control compares two noise pretrainings and not noise with random init: any
training, even on noise with labels that say nothing about it, changes a frozen encoder's
features in ways the probe rewards (the ``training`` comparison measures it; README, Controls).
That effect is real, so "noise beats random init" is a finding about training, not a false
positive of the harness.
The null that is known to hold is a repeat of the information-free pretraining on other noise:
two such encoders must not differ. What the data adds is ``structure`` (micrographs against noise
at the same budget), and ``positive`` keeps the comparison with the untrained start.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bench.controls.paired import PairedTest, paired_test
from bench.controls.pools import POOL_SEED, evaluation_card, noise_pool, part, structured_pool
from bench.controls.pretrain import PretrainSettings, pretrain_supervised
from bench.data.images import LabeledImage
from bench.finetune.probe import ProbeConfig, probe
from bench.models.encoders import build_encoder, load_strict

BASELINE = "random init"
NOISE_SEED = POOL_SEED
"""The noise pool's seed; the repeat draws its noise with the next one."""


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
    """``better``: significantly above the baseline; ``no difference``: not significant either
    way (two-sided); ``measured``: reported, no verdict."""

    def passed(self, test: PairedTest) -> bool | None:
        if self.expect == "measured":
            return None
        if self.expect == "better":
            return test.significant and test.mean_diff > 0
        return not test.significant


POOLS = ("structured", "noise", "noise repeat")
"""The pretrained encoders, each named by the pool it is pretrained on."""
CONTROLS = (
    Control("positive", "structured", BASELINE, "better"),
    Control("structure", "structured", "noise", "better"),
    Control("negative", "noise repeat", "noise", "no difference"),
    Control("training", "noise", BASELINE, "measured"),
)
"""The controls (module docstring): the positive control, what structured data adds over noise at
the same budget, the negative control (a repeat of the noise pretraining on other noise), and the
effect of training as such (noise against the untrained start), reported without a verdict."""


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
    pools = {
        "structured": structured,
        "noise": noise_pool(structured, cfg.noise, NOISE_SEED),
        "noise repeat": noise_pool(structured, cfg.noise, NOISE_SEED + 1),
    }
    encoders: dict[str, nn.Module] = {BASELINE: start}
    for name in POOLS:
        announce(f"pretraining the {name} encoder ({len(pools[name])} images)")
        state = pretrain_supervised(
            start, pools[name], card.num_classes, cfg.pretrain, cfg.init_seed, f"pretrain {name}"
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
