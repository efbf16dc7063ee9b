"""The contract every registered method keeps; a new method is tested by registering it.

- it is registered under its own name, documented, and constructible with its defaults;
- an SSL method has engine settings for every profile, and every key of its search space is a
  parameter it accepts;
- ``encoder_for`` gives weights that load strictly into a segmenter (SSL methods: a real smoke
  pretraining through the engine and its cache, with finite losses, reused from the cache after);
- an SSL method's loss falls on a fixed batch, trained with its own smoke optimizer.
"""

from __future__ import annotations

import inspect
import math
import sys
from pathlib import Path

import pytest
import torch
from optuna.distributions import CategoricalDistribution

from bench.data.cards import load_card
from bench.data.sources import load_labeled
from bench.models.encoders import build_encoder
from bench.models.segmenter import build_segmenter
from bench.profiles import PROFILES
from bench.ssl.base import SSLMethod
from bench.ssl.engine import build_optimizer, encoder_for
from bench.ssl.method import Baseline, Method
from bench.ssl.registry import get_method, method_names
from tests.helpers.ssl import synthetic_context, synthetic_pool
from tests.helpers.weights import fake_imagenet_weights

METHODS = sorted(method_names())
SSL_METHODS = [name for name in METHODS if get_method(name).kind == "ssl"]
LOSS_RECIPES: dict[str, dict] = {
    # DenseCL's queues start as random unit vectors: its loss first rises while real keys fill
    # them (forward passes with gradients enqueue), so they are filled before training.
    "densecl": {"params": {"queue_size": 64}, "fill_forwards": 8},
    # SimCLR's NT-Xent over 8 images falls slowly at the smoke rate: 16 steps took it from 3.04
    # to 2.96 on one machine's kernels, 32 steps to 1.97 (the same 4 view sets each cycle).
    "simclr": {"steps": 32},
}


def context(tmp_path: Path, method: type[Method], **kw):
    shots = load_labeled(load_card("synthetic"), Path("."), ["train_000"])
    return synthetic_context(tmp_path, shots=shots if method.uses_labels else [], **kw)


@pytest.mark.parametrize("name", METHODS)
def test_registered_documented_and_constructible(name: str) -> None:
    cls = get_method(name)
    assert cls.name == name and cls.description
    assert inspect.getdoc(sys.modules[cls.__module__]), f"{cls.__module__} has no docstring"
    assert issubclass(cls, (SSLMethod, Baseline))
    method = cls()
    assert cls(method.params_dict()).params_dict() == method.params_dict()
    if issubclass(cls, SSLMethod):
        assert cls.kind == "ssl"
        assert set(PROFILES) <= set(cls.profiles), f"{name} lacks profiles"
        for profile in PROFILES:
            for key, dim in cls.search_space(profile).items():
                cls({key: dim.choices[0] if isinstance(dim, CategoricalDistribution) else dim.low})
            assert method.views(method.engine_config(profile)), f"{name} declares no views"
    else:
        assert cls.kind == "supervised" and cls.fixed_init in ("random", "imagenet")


@pytest.mark.parametrize("name", METHODS)
def test_encoder_loads_strictly_into_the_segmenter(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = get_method(name)
    if cls.fixed_init == "imagenet":
        monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
        fake_imagenet_weights(tmp_path / "weights", monkeypatch)
    ctx = context(tmp_path, cls)
    outcome = encoder_for(cls(), ctx)
    if cls.fixed_init == "random":
        assert outcome.weights is None
        return
    assert outcome.weights is not None
    model = build_segmenter("unet", ctx.encoder, 3, outcome.weights)
    loaded = model.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in outcome.weights.encoder.items())
    if issubclass(cls, SSLMethod):
        losses = outcome.info["pretrain_losses"]
        assert losses and all(math.isfinite(v) for v in losses)
        again = encoder_for(cls(), ctx)
        assert again.info["pretrain_cached"] and not outcome.info["pretrain_cached"]
        assert all(
            torch.equal(again.weights.encoder[k], v) for k, v in outcome.weights.encoder.items()
        )


@pytest.mark.parametrize("name", SSL_METHODS)
def test_loss_falls_on_a_fixed_batch(name: str, tmp_path: Path) -> None:
    recipe = LOSS_RECIPES.get(name, {})
    cls = get_method(name)
    method = cls(recipe.get("params"))
    cfg = method.engine_config("smoke")
    torch.manual_seed(0)
    model = method.build_model(build_encoder("resnet18"), context(tmp_path, cls), cfg)
    optimizer = build_optimizer(cfg, model)
    pool, index = synthetic_pool(), torch.arange(8)
    for i in range(recipe.get("fill_forwards", 0)):
        model.training_loss(pool, index, torch.Generator().manual_seed(100 + i))
    losses = []
    steps = recipe.get("steps", 16)
    for step in range(steps):
        loss = model.training_loss(pool, index, torch.Generator().manual_seed(step % 4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step((step + 1) / steps)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses
