"""Base classes for self-supervised methods: the method (per-profile engine settings, its view
recipes, a model factory) and the model (an encoder plus heads that returns its loss for a batch of
pool images).

A method module subclasses ``SSLMethod`` (registered by name) and ``SSLModel``. The shared loop in
``bench.ssl.engine`` does everything else: optimizer, schedule, AMP, checkpoints, resume, caching
and export. This module never calls the engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
from abc import abstractmethod
from typing import Any, ClassVar

import torch
from optuna.distributions import FloatDistribution
from torch import nn

from bench.data.pool import pool_fingerprint
from bench.models.segmenter import PretrainedWeights
from bench.ssl.augment import ImagePool, ViewConfig
from bench.ssl.config import ENGINE_FIELDS, ENGINE_VERSION, PretrainConfig
from bench.ssl.method import EncoderContext, Method, SearchSpace, build_params


class SSLModel(nn.Module):
    """An encoder plus a method's heads; ``training_loss`` returns the scalar loss of one batch."""

    def __init__(self, encoder: nn.Module, bn_views: str = "separate") -> None:
        super().__init__()
        self.encoder = encoder
        self.bn_views = bn_views

    def forward_views(self, fn, *views: torch.Tensor) -> list[Any]:
        """Apply ``fn`` to each view: separately, or once on their concatenation (``bn_views``)."""
        if self.bn_views == "concat":
            out = fn(torch.cat(views))
            if isinstance(out, (list, tuple)):
                return [type(out)(o.chunk(len(views))[i] for o in out) for i in range(len(views))]
            return list(out.chunk(len(views)))
        return [fn(v) for v in views]

    @abstractmethod
    def training_loss(
        self, pool: ImagePool, index: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """The loss for the pool images ``index`` (the model draws its own views; ``pool.ids``
        says which entries are the same image)."""

    def after_step(self, progress: float) -> None:
        """Called after each optimizer step with the fraction of training done (EMA updates)."""

    def views_per_sample(self) -> int:
        """Encoder passes per sample and step, for the images/s figure."""
        return 2

    def view_passes(self, batch_size: int) -> int:
        """Encoder view-passes in one step (methods that add images to the batch override this)."""
        return self.views_per_sample() * batch_size

    def exported(self) -> PretrainedWeights:
        """What fine-tuning receives: the encoder (methods that pretrain a decoder add it)."""
        return PretrainedWeights(_cpu_state(self.encoder))

    compile_whole_step: bool = True
    """Whether ``training_loss`` can be compiled as a whole; methods with data-dependent shapes
    set this to False and only their encoder is compiled."""


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


class SSLMethod(Method):
    """A pretraining method: per-profile engine settings, view recipes and a model factory."""

    kind: ClassVar[str] = "ssl"
    profiles: ClassVar[dict[str, PretrainConfig]]
    """Engine settings per profile (every profile of ``bench.profiles``)."""

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        params = dict(params or {})
        engine = {k: params.pop(k) for k in list(params) if k in ENGINE_FIELDS}
        self.engine_overrides = engine
        super().__init__(params)

    @classmethod
    def search_space(cls, profile: str) -> SearchSpace:
        """The pretraining loop's ``bench tune`` ranges around the profile's settings: learning rate
        ÷10..×10 (log) and weight decay 1e-7..1e-3 (log) where the profile uses any (a schedule
        without weight decay, as PSCL's Adam, keeps none); never the steps (compute stays fixed).
        Methods add their own."""
        base = cls.profiles.get(profile) or cls.profiles["standard"]
        space: SearchSpace = {"lr": FloatDistribution(base.lr / 10, base.lr * 10, log=True)}
        if base.weight_decay > 0:
            wd = base.weight_decay
            space["weight_decay"] = FloatDistribution(min(1e-7, wd), max(1e-3, wd), log=True)
        return space

    def engine_config(self, profile: str) -> PretrainConfig:
        base = self.profiles.get(profile) or self.profiles["standard"]
        if not self.engine_overrides:
            return base
        changes = build_params(PretrainConfig, self.engine_overrides, self.name)
        return dataclasses.replace(base, **{k: getattr(changes, k) for k in self.engine_overrides})

    @abstractmethod
    def views(self, cfg: PretrainConfig) -> dict[str, ViewConfig]:
        """The method's views at these settings, by name (``sized`` recipes); recorded in the cache
        key, so a changed recipe never reuses an encoder pretrained with the old one."""

    @abstractmethod
    def build_model(self, encoder: nn.Module, ctx: EncoderContext, cfg: PretrainConfig) -> SSLModel:
        """The method's model around ``encoder`` (an smp encoder with its initial weights)."""

    def pretrain_config(self, ctx: EncoderContext) -> dict[str, Any]:
        cfg = self.engine_config(ctx.profile)
        config = {
            "engine_version": ENGINE_VERSION,
            "method": self.name,
            "params": self.params_dict(),
            "engine": dataclasses.asdict(cfg),
            "views": {k: dataclasses.asdict(v) for k, v in self.views(cfg).items()},
            "encoder": ctx.encoder,
            "init": ctx.init,
            "scale": ctx.scale.describe(),
            "pool": pool_fingerprint(ctx.card, ctx.data_root, ctx.split, ctx.pool),
            "seed": ctx.seed,
            "profile": ctx.profile,
        }
        if self.uses_labels:
            config["shots"] = [s.stem for s in ctx.shots]
            config["shots_digest"] = hashlib.sha256(
                b"".join(s.mask.tobytes() for s in ctx.shots)
            ).hexdigest()[:16]
            config["draw"] = ctx.draw
        return config
