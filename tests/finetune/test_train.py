"""The fine-tuning step: ``--compile`` rules, and compiled vs eager losses on the same batches."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from bench.data.images import LabeledImage
from bench.data.synthetic import generate_labeled
from bench.finetune.train import ShotSampler, TrainingDiverged, TrainStep
from bench.models.segmenter import build_segmenter
from bench.profiles import get_profile

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _losses(compile: str, steps: int = 3) -> list[float]:
    cfg = get_profile("smoke").finetune
    torch.manual_seed(0)
    model = build_segmenter(cfg.arch, cfg.encoder, 3)
    shots = [
        LabeledImage(f"s{i}", image, mask)
        for i, (image, mask) in enumerate(generate_labeled(2, 96, seed=3))
    ]
    train_step = TrainStep(
        model, ShotSampler(shots, cfg.crop, np.random.default_rng(0)), cfg, 3, CPU, compile
    )
    assert train_step.compiled == (compile == "on")
    return [train_step(cfg.batch_size, step) for step in range(1, steps + 1)]


def test_compiled_step_gives_the_eager_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--compile on`` through Dynamo + AOTAutograd (``aot_eager``: no code generation, seconds on
    CPU) trains like the eager step: same losses over three optimizer steps."""
    import torch._dynamo as dynamo

    eager = _losses("off")
    assert eager == _losses("auto")  # auto never compiles on CPU
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    dynamo.reset()
    try:
        compiled = _losses("on")
    finally:
        dynamo.reset()
    assert eager[-1] != eager[0]  # it trains
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)


def test_a_diverging_step_names_the_step_and_the_fix() -> None:
    cfg = get_profile("smoke").finetune
    model = build_segmenter(cfg.arch, cfg.encoder, 3)
    with torch.no_grad():
        model.segmentation_head[0].bias.fill_(float("nan"))
    image, mask = generate_labeled(1, 96, seed=1)[0]
    train_step = TrainStep(
        model,
        ShotSampler([LabeledImage("s", image, mask)], cfg.crop, np.random.default_rng(0)),
        cfg,
        3,
        CPU,
    )
    with pytest.raises(TrainingDiverged, match="at step 7; try a lower --lr"):
        train_step(cfg.batch_size, 7)
