"""BYOL: an online network predicts an EMA target network's projection of another view.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020 (arXiv 2006.07733); reference code github.com/deepmind/deepmind-research (byol/).

- Online network: encoder → ``BYOLProjectionHead`` (→4096→256, BN+ReLU) →
  ``BYOLPredictionHead`` (→4096→256); target network: an EMA copy of encoder + projector (no
  gradient, no predictor).
- Loss: symmetric negative cosine similarity (lightly ``NegativeCosineSimilarity``) between each
  view's prediction and the other view's target projection, averaged over the two directions
  (the paper's symmetrised 2 − 2·cos loss is 4 + 4× this: same minimiser, ¼ of its gradient).
- Target momentum τ = 1 − (1 − τ_base)·(cos(π·progress) + 1)/2, updated after every optimizer
  step (lightly ``cosine_schedule`` / ``update_momentum``). τ_base = 0.99: the reference code's
  ``_EMA_PRESETS`` value for 100- and 300-epoch runs (0.996 is for 1000 epochs;
  byol/configs/byol.py).
- Views as BYOL (paper Table 6; lightly ``BYOLView1Transform`` / ``BYOLView2Transform``): random
  resized crop of area 0.08–1 (``min_scale``), ratio 3/4–4/3, horizontal flip p 0.5, colour
  jitter p 0.8 with brightness 0.4 and contrast 0.4 (saturation 0.2, hue 0.1 and grayscale p 0.2
  are identities on grayscale micrographs), Gaussian blur σ ∈ [0.1, 2] with p 1.0 in the first
  view and 0.1 in the second, solarisation (values ≥ 0.5 inverted) with p 0 and 0.2. The area
  range applies with ``crop = "image"`` (matssl-paper); other profiles cut views in working
  pixels at their zoom range.
- Optimizer: the paper's LARS (lr 0.2·B/256, batch 4096) is not in the engine; the profiles use
  SGD (momentum 0.9, weight decay 5e-4, cosine) with lightly's small-batch BYOL recipe
  lr = 0.06·B/128 (lightly CIFAR-10 benchmark), and the paper's 10 % warmup for ``standard``.
  ``matssl-paper`` keeps the MatSSL seed's comparison schedule (224² views, batch 32, 5,000
  steps) with that lr; ``pscl-paper`` the PSCL seed's (Adam 1e-4, batch 8, 384², 4,800 steps).

The exported encoder is the ONLINE encoder (``model.encoder``); the target lives under
``target_encoder`` / ``target_projector`` and is dropped after pretraining.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from optuna.distributions import FloatDistribution
from torch import nn

from bench.core.errors import BenchError
from bench.models.encoders import encoder_channels
from bench.ssl.augment import ImagePool, ViewConfig, make_views, sized
from bench.ssl.base import SSLMethod, SSLModel
from bench.ssl.config import PretrainConfig, matssl_paper, pscl_paper
from bench.ssl.method import EncoderContext, SearchSpace
from bench.ssl.registry import register_method


@dataclass(frozen=True)
class BYOLParams:
    hidden_dim: int = 4096
    output_dim: int = 256
    momentum_base: float = 0.99
    """Target EMA momentum at the start; cosine-scheduled to ``momentum_end``."""
    momentum_end: float = 1.0
    min_scale: float = 0.08
    """Smallest crop area fraction of the random resized crop."""


BYOL_VIEWS = (
    ViewConfig(hflip=0.5, jitter=0.8, brightness=0.4, contrast=0.4, blur=1.0, solarize=0.0),
    ViewConfig(hflip=0.5, jitter=0.8, brightness=0.4, contrast=0.4, blur=0.1, solarize=0.2),
)
"""BYOL's two asymmetric views (module docstring); the crop area range is ``min_scale``–1."""

BYOL_PROFILES = {
    "smoke": PretrainConfig(
        steps=2, batch_size=4, view_size=64, pool_limit=8, lr=0.05, weight_decay=5e-4
    ),
    "quick": PretrainConfig(
        steps=40,
        batch_size=16,
        view_size=96,
        lr=0.06 * 16 / 128,
        weight_decay=5e-4,
        warmup_steps=10,
    ),
    "standard": PretrainConfig(
        steps=5000,
        batch_size=128,
        view_size=224,
        lr=0.06 * 128 / 128,
        weight_decay=5e-4,
        warmup_steps=500,
    ),
    "matssl-paper": matssl_paper(lr=0.06 * 32 / 128, weight_decay=5e-4),
    "pscl-paper": pscl_paper(),
}


def target_momentum(progress: float, base: float, end: float = 1.0) -> float:
    """BYOL's τ at ``progress`` ∈ [0, 1]: ``base`` at 0, ``end`` at 1, cosine in between."""
    # cosine_schedule with max_steps=2 runs its half cosine over step ∈ [0, 1]: step = progress.
    return cosine_schedule(
        step=min(max(progress, 0.0), 1.0), max_steps=2, start_value=base, end_value=end
    )


class BYOLModel(SSLModel):
    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        predictor: nn.Module,
        views: tuple[ViewConfig, ViewConfig],
        momentum: tuple[float, float],
        bn_views: str,
    ) -> None:
        super().__init__(encoder, bn_views)
        self.projector = projector
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(projector)
        deactivate_requires_grad(self.target_encoder)
        deactivate_requires_grad(self.target_projector)
        self.criterion = NegativeCosineSimilarity()
        self.views = views
        self.momentum_base, self.momentum_end = momentum
        self.momentum = self.momentum_base
        """The τ of the latest EMA update."""

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.encoder(x)[-1].mean(dim=(2, 3))))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_encoder(x)[-1].mean(dim=(2, 3)))

    def training_loss(
        self, pool: ImagePool, index: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        v1 = make_views(pool, index, self.views[0], generator).images
        v2 = make_views(pool, index, self.views[1], generator).images
        p1, p2 = self.forward_views(self.online, v1, v2)
        with torch.no_grad():
            z1, z2 = self.forward_views(self.target, v1, v2)
        p1, p2, z1, z2 = p1.float(), p2.float(), z1.float(), z2.float()  # an fp32 loss
        return 0.5 * (self.criterion(p1, z2) + self.criterion(p2, z1))

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.momentum = target_momentum(progress, self.momentum_base, self.momentum_end)
        update_momentum(self.encoder, self.target_encoder, self.momentum)
        update_momentum(self.projector, self.target_projector, self.momentum)


@register_method
class BYOL(SSLMethod):
    name = "byol"
    description = "BYOL: online predictor vs EMA target (τ 0.99→1 cosine), symmetric cosine loss"
    Params = BYOLParams
    profiles = BYOL_PROFILES

    @classmethod
    def search_space(cls, profile: str) -> SearchSpace:
        return {
            "momentum_base": FloatDistribution(0.9, 0.999),
            "min_scale": FloatDistribution(0.08, 0.5),
            **super().search_space(profile),
        }

    def build_model(self, encoder: nn.Module, ctx: EncoderContext, cfg: PretrainConfig) -> SSLModel:
        p = self.params
        if not 0.0 <= p.momentum_base <= p.momentum_end <= 1.0:
            raise BenchError(
                "byol: need 0 ≤ momentum_base ≤ momentum_end ≤ 1, got "
                f"{p.momentum_base} and {p.momentum_end}"
            )
        if not 0.0 < p.min_scale <= 1.0:
            raise BenchError(f"byol: min_scale must be in (0, 1], got {p.min_scale}")
        projector = BYOLProjectionHead(encoder_channels(encoder)[-1], p.hidden_dim, p.output_dim)
        predictor = BYOLPredictionHead(p.output_dim, p.hidden_dim, p.output_dim)
        views = self.views(cfg)
        return BYOLModel(
            encoder,
            projector,
            predictor,
            (views["view1"], views["view2"]),
            (p.momentum_base, p.momentum_end),
            cfg.bn_views,
        )

    def views(self, cfg: PretrainConfig) -> dict[str, ViewConfig]:
        scale = (self.params.min_scale, 1.0)
        first, second = (sized(dataclasses.replace(v, scale=scale), cfg) for v in BYOL_VIEWS)
        return {"view1": first, "view2": second}
