"""SimCLR: two augmented views per image, NT-Xent over in-batch negatives.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020
(arXiv 2002.05709). Built on lightly's ``SimCLRProjectionHead``; the loss is NT-Xent
(``bench.ssl.losses.nt_xent``, equal to lightly's ``NTXentLoss`` on distinct images) with copies of
one image left out of each other's negatives. τ = 0.5 (the paper's small-batch setting), SGD with
10 % warmup steps then cosine.

- Views: SimCLR's own recipe (paper Appendix A; lightly ``SimCLRTransform`` defaults): random
  resized crop of area 0.08–1 and ratio 3/4–4/3, horizontal flip p 0.5, colour jitter with
  p 0.8 at strength 1 (brightness 0.8, contrast 0.8; saturation 0.8, hue 0.2 and the grayscale
  conversion with p 0.2 are identities on grayscale micrographs), Gaussian blur p 0.5 with
  σ ∈ [0.1, 2]. The 0.08–1 area range applies where crops are a fraction of the image
  (``crop = "image"``, the matssl-paper profile); elsewhere views are cut in working pixels at the
  profile's zoom range (``bench.ssl.config``).
- Profiles: ``matssl-paper`` keeps the MatSSL seed's comparison schedule (SGD 0.1, batch 32,
  224² views, 5,000 steps) so methods are compared on equal terms; ``pscl-paper`` the PSCL seed's
  (Adam 1e-4, batch 8, 384², 4,800 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.models.modules import SimCLRProjectionHead
from optuna.distributions import FloatDistribution
from torch import nn

from bench.models.encoders import encoder_channels
from bench.ssl.augment import ImagePool, ViewConfig, make_views, sized
from bench.ssl.base import SSLMethod, SSLModel
from bench.ssl.config import PretrainConfig, matssl_paper, pscl_paper
from bench.ssl.losses import nt_xent
from bench.ssl.method import EncoderContext, SearchSpace
from bench.ssl.registry import register_method


@dataclass(frozen=True)
class SimCLRParams:
    temperature: float = 0.5
    hidden_dim: int = 2048
    output_dim: int = 128


SIMCLR_VIEW = ViewConfig(
    scale=(0.08, 1.0), hflip=0.5, jitter=0.8, brightness=0.8, contrast=0.8, blur=0.5
)
"""SimCLR's augmentation (module docstring)."""

SIMCLR_PROFILES = {
    "smoke": PretrainConfig(steps=2, batch_size=4, view_size=64, pool_limit=8, lr=0.05),
    "quick": PretrainConfig(steps=40, batch_size=16, view_size=96, lr=0.1, warmup_steps=10),
    "standard": PretrainConfig(
        steps=5000, batch_size=128, view_size=224, lr=0.15, warmup_steps=500
    ),
    "matssl-paper": matssl_paper(),
    "pscl-paper": pscl_paper(),
}


class PooledContrastModel(SSLModel):
    """Global contrast: pooled encoder features → projection head → NT-Xent between two views."""

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        temperature: float,
        view: ViewConfig,
        bn_views: str,
    ) -> None:
        super().__init__(encoder, bn_views)
        self.head = head
        self.temperature = temperature
        self.view = view

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1].mean(dim=(2, 3)))

    def training_loss(
        self, pool: ImagePool, index: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        v1 = make_views(pool, index, self.view, generator).images
        v2 = make_views(pool, index, self.view, generator).images
        z1, z2 = self.forward_views(self.embed, v1, v2)
        return nt_xent(z1, z2, self.temperature, pool.ids[index])


@register_method
class SimCLR(SSLMethod):
    name = "simclr"
    description = "SimCLR: NT-Xent between two augmented views (lightly head, SimCLR's views)"
    Params = SimCLRParams
    profiles = SIMCLR_PROFILES

    @classmethod
    def search_space(cls, profile: str) -> SearchSpace:
        return {
            "temperature": FloatDistribution(0.05, 1.0, log=True),
            **super().search_space(profile),
        }

    def views(self, cfg: PretrainConfig) -> dict[str, ViewConfig]:
        return {"view": sized(SIMCLR_VIEW, cfg)}

    def build_model(self, encoder: nn.Module, ctx: EncoderContext, cfg: PretrainConfig) -> SSLModel:
        p = self.params
        head = SimCLRProjectionHead(encoder_channels(encoder)[-1], p.hidden_dim, p.output_dim)
        return PooledContrastModel(
            encoder, head, p.temperature, self.views(cfg)["view"], cfg.bn_views
        )
