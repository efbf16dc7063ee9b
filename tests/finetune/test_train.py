"""The fine-tuning step: ``--compile`` rules, compiled vs eager losses on the same batches, the
seed-faithful settings (whole-image epoch batches, per-part learning rates, the PSCL loss) and
prediction at the working scale."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError
from bench.data.images import LabeledImage
from bench.data.synthetic import generate_labeled
from bench.finetune.inference import predict
from bench.finetune.losses import make_loss, rare_class_weights
from bench.finetune.train import ShotSampler, TrainingDiverged, TrainStep, param_groups
from bench.models.inputs import normalize_uint8
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


def _shots(n: int, size: int = 32) -> list[LabeledImage]:
    return [
        LabeledImage(f"s{i}", image, mask)
        for i, (image, mask) in enumerate(generate_labeled(n, size, seed=5))
    ]


def test_epoch_batching_walks_through_every_shot_once_per_epoch() -> None:
    shots = _shots(3)
    marks = [
        LabeledImage(s.stem, np.full_like(s.image, 10 * i), s.mask) for i, s in enumerate(shots)
    ]
    sampler = ShotSampler(marks, 0, np.random.default_rng(0), augment=False, batching="epoch")
    for _ in range(3):  # a batch larger than the shots: all of them, one step per epoch
        x, y = sampler.batch(128)
        assert sorted(x[:, 0, 0].tolist()) == [0, 10, 20] and y.shape == (3, 32, 32)
    seen = [sampler.batch(2)[0][:, 0, 0].tolist() for _ in range(4)]  # 2 + 1, then 2 + 1
    assert [len(b) for b in seen] == [2, 1, 2, 1]
    assert sorted(seen[0] + seen[1]) == sorted(seen[2] + seen[3]) == [0, 10, 20]
    x, _ = ShotSampler(marks, 0, np.random.default_rng(0), augment=False).batch(4)
    assert torch.equal(x[0], torch.from_numpy(marks[int(x[0, 0, 0]) // 10].image))  # not cropped


def test_whole_image_batches_need_one_size() -> None:
    mixed = [*_shots(1, 32), *_shots(1, 48)]
    with pytest.raises(BenchError, match="whole images"):
        ShotSampler(mixed, 0, np.random.default_rng(0))


def test_pretrained_parts_train_at_their_own_rate() -> None:
    cfg = dataclasses.replace(get_profile("pscl-paper").finetune, encoder="resnet18")
    model = build_segmenter("unet", "resnet18", 3)
    groups = param_groups(model, ("encoder", "decoder"), cfg)
    assert [g.get("lr") for g in groups] == [1e-4, None]  # None: the optimizer's lr, 1e-3
    head = {id(p) for p in model.segmentation_head.parameters()}
    assert {id(p) for p in groups[1]["params"]} == head
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    only_encoder = param_groups(model, ("encoder",), cfg)
    assert {id(p) for p in only_encoder[0]["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(param_groups(model, (), cfg)) == 1  # nothing pretrained (scratch): one rate
    sampler = ShotSampler(_shots(1, 64), 64, np.random.default_rng(0))
    step = TrainStep(model, sampler, cfg, 3, CPU, pretrained=("encoder",))
    assert [g["lr"] for g in step.optimizer.param_groups] == [1e-4, 1e-3]


def test_weighted_ce_and_foreground_dice_by_hand() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]])  # 1×3×1×2
    target = torch.tensor([[[0, 1]]])
    weights = torch.tensor([1.0, 10.0, 10.0])
    loss = make_loss("wce+fgdice", 3, background=0, class_weights=weights)(logits, target)
    p = logits.softmax(dim=1)[0, :, 0]  # 3 classes × 2 pixels
    ce = (1 * -p[0, 0].log() + 10 * -p[1, 1].log()) / (1 + 10)
    dice1 = 1 - 2 * (p[1, 1] + 1e-4) / (p[1].sum() + 1 + 1e-4)
    dice2 = 1 - 2 * (0 + 1e-4) / (p[2].sum() + 0 + 1e-4)
    torch.testing.assert_close(loss, 0.5 * ce + 0.5 * (dice1 + dice2) / 2)


def test_rare_classes_get_the_rare_weight() -> None:
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[:3] = 1  # 30 %
    mask[3, :5] = 2  # 5 %
    weights = rare_class_weights([mask], 4, rare_share=0.1, rare_weight=10.0)
    assert weights.tolist() == [1.0, 1.0, 10.0, 10.0]  # class 3 is absent: rare too


def test_prediction_at_a_working_resize_is_scored_at_native_size() -> None:
    model = build_segmenter("unet", "resnet18", 3).eval()
    image = (np.arange(70 * 100) % 251).astype(np.uint8).reshape(70, 100)
    pred = predict(model, image, CPU, working=(64, 96))
    assert pred.shape == (70, 100)
    with torch.no_grad():
        x = normalize_uint8(torch.from_numpy(image)[None])
        x = torch.nn.functional.interpolate(x, size=(64, 96), mode="bilinear")
        logits = torch.nn.functional.interpolate(model(x), size=(70, 100), mode="bilinear")
    assert np.array_equal(pred, logits.argmax(1)[0].numpy().astype(np.uint8))
    assert predict(model, image, CPU, size=(64, 96), working=(32, 32)).shape == (64, 96)
