"""BYOL: the loss falls, the target is an EMA of the online net, only the online net is exported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch

from bench.data.cards import load_card
from bench.data.pool import load_pool
from bench.ssl.augment import ImagePool
from bench.ssl.config import PretrainConfig
from bench.ssl.engine import build_optimizer
from bench.ssl.method import EncoderContext
from methods.byol import BYOL, BYOLModel, target_momentum

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pool() -> ImagePool:
    card = load_card("synthetic")
    return ImagePool(load_pool(card, Path(".")), CPU)


def build(tmp_path: Path, **params) -> tuple[BYOLModel, torch.optim.Optimizer]:
    card = load_card("synthetic")
    ctx = EncoderContext(card, Path("."), "resnet18", "random", "smoke", 0, CPU, tmp_path)
    method = BYOL(params)
    cfg = dataclasses.replace(method.engine_config("smoke"), lr=0.05, batch_size=8, view_size=48)
    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder("resnet18", weights=None)
    model = method.build_model(encoder, ctx, cfg)
    model.train()
    return model, build_optimizer(cfg, model)


def step(
    model: BYOLModel, optimizer, pool: ImagePool, index: torch.Tensor, seed: int, progress: float
) -> float:
    loss = model.training_loss(pool, index, torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.after_step(progress)
    return loss.item()


def test_momentum_schedule():
    assert target_momentum(0.0, 0.99) == pytest.approx(0.99)
    assert target_momentum(0.5, 0.99) == pytest.approx(0.995)
    assert target_momentum(1.0, 0.99) == pytest.approx(1.0)
    values = [target_momentum(p / 10, 0.99) for p in range(11)]
    assert values == sorted(values)


def test_target_is_an_ema_of_the_online_net(pool, tmp_path):
    model, optimizer = build(tmp_path)
    online = dict(model.encoder.named_parameters())
    target = dict(model.target_encoder.named_parameters())
    name = "layer4.1.conv2.weight"
    assert torch.equal(online[name], target[name])  # the target starts as a copy
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    assert not any(p.requires_grad for p in model.target_projector.parameters())
    index = torch.arange(8)
    step(model, optimizer, pool, index, seed=0, progress=0.1)
    before = target[name].clone()
    loss = model.training_loss(pool, index, torch.Generator().manual_seed(1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.equal(target[name], before)  # the optimizer does not touch the target
    model.after_step(0.25)
    m = target_momentum(0.25, 0.99)
    assert model.momentum == pytest.approx(m)
    expected = m * before + (1 - m) * online[name].detach()
    torch.testing.assert_close(target[name], expected)
    assert not torch.equal(target[name], online[name])
    assert (target[name] - online[name]).norm() < (before - online[name]).norm()
    model.after_step(1.0)  # τ = 1 at the end: the target no longer moves
    torch.testing.assert_close(target[name], expected)


def test_exported_encoder_is_the_online_one(tmp_path):
    model, optimizer = build(tmp_path)
    state = model.state_dict()
    encoder_keys = {k for k in state if k.startswith("encoder.")}
    assert encoder_keys == {f"encoder.{k}" for k in model.encoder.state_dict()}
    target_storage = {t.data_ptr() for t in model.target_encoder.state_dict().values()}
    assert not target_storage & {t.data_ptr() for t in model.encoder.state_dict().values()}
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in model.encoder.parameters()} <= trained
    assert not {id(p) for p in model.target_encoder.parameters()} & trained
    assert not {id(p) for p in model.target_projector.parameters()} & trained


def test_views_blur_and_solarize_asymmetrically_and_params_apply(tmp_path):
    model, _ = build(tmp_path, min_scale=0.3, momentum_base=0.9)
    assert [v.blur for v in model.views] == [1.0, 0.1]
    assert [v.solarize for v in model.views] == [0.0, 0.2]
    assert all(v.size == 48 and v.area_of == "view" for v in model.views)  # working pixels
    image = BYOL({"min_scale": 0.3}).views(dataclasses.replace(PretrainConfig(), crop="image"))
    assert all(v.scale == (0.3, 1.0) and v.area_of == "image" for v in image.values())
    assert model.momentum_base == 0.9
