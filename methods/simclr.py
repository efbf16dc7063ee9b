"""SimCLR: two augmented views per image, NT-Xent over in-batch negatives.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
Built on lightly's ``SimCLRProjectionHead`` and ``NTXentLoss``; defaults follow the paper's
small-batch setting (τ = 0.5, SGD with 10 warmup epochs, cosine), views as in lightly's
SimCLR transform (random resized crop 0.2–1, flip, colour jitter, blur). The ``paper`` profile
uses the MatSSL seed's schedule (224² views, 100 epochs, batch 32, SGD 0.1) so the methods are
compared on equal terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from bench.models.encoders import encoder_channels
from bench.ssl.augment import ImagePool, ViewConfig, make_views
from bench.ssl.base import SSLMethod, SSLModel
from bench.ssl.config import PretrainConfig
from bench.ssl.method import EncoderContext, SearchDim
from bench.ssl.registry import register_method


@dataclass(frozen=True)
class SimCLRParams:
    temperature: float = 0.5
    hidden_dim: int = 2048
    output_dim: int = 128


SIMCLR_PROFILES = {
    "smoke": PretrainConfig(
        epochs=1, batch_size=4, view_size=64, steps_per_epoch=2, pool_limit=8, lr=0.05
    ),
    "quick": PretrainConfig(
        epochs=4, batch_size=16, view_size=96, steps_per_epoch=10, lr=0.1, warmup_epochs=1
    ),
    "standard": PretrainConfig(
        epochs=100, batch_size=128, view_size=224, lr=0.15, warmup_epochs=10
    ),
    "paper": PretrainConfig(epochs=100, batch_size=32, view_size=224, lr=0.1),
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
        self.criterion = NTXentLoss(temperature=temperature)
        self.view = view

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1].mean(dim=(2, 3)))

    def training_loss(
        self, pool: ImagePool, index: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        v1 = make_views(pool, index, self.view, generator).images
        v2 = make_views(pool, index, self.view, generator).images
        z1, z2 = self.forward_views(self.embed, v1, v2)
        return self.criterion(z1, z2)


@register_method
class SimCLR(SSLMethod):
    name = "simclr"
    description = "SimCLR: NT-Xent between two augmented views (lightly head and loss)"
    Params = SimCLRParams
    profiles = SIMCLR_PROFILES

    @classmethod
    def search_space(cls, profile: str) -> dict[str, SearchDim]:
        return {"temperature": SearchDim.real(0.05, 1.0, log=True), **super().search_space(profile)}

    def build_model(self, encoder: nn.Module, ctx: EncoderContext, cfg: PretrainConfig) -> SSLModel:
        p = self.params
        head = SimCLRProjectionHead(encoder_channels(encoder)[-1], p.hidden_dim, p.output_dim)
        return PooledContrastModel(
            encoder, head, p.temperature, ViewConfig(size=cfg.view_size), cfg.bn_views
        )
