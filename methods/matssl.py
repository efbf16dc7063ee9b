"""MatSSL: gated multi-stage feature fusion for contrastive pretraining on micrographs.

Nguyen, Hieu & Lee, "MatSSL: Robust Self-Supervised Representation Learning for Metallographic
Image Segmentation", ICCVW 2025 (arXiv 2507.18184); seed code github.com/dhp510/MatSSL @ af98bfc.

Each of the four ResNet stages is globally average-pooled and multiplied by a learnable
per-channel sigmoid gate (initialised to 1, so σ = 0.731), the gated vectors are concatenated
(3840-d for ResNet-50) and fed to a SimCLR projection head (→2048→128 with BN on the output),
trained with NT-Xent at τ = 0.07 over two separately forwarded views. The gates and the head are
discarded after pretraining; only the encoder is kept. Seed defaults: SGD lr 0.1, momentum 0.9,
weight decay 1e-6, cosine over 100 epochs, batch 32, 224² views, no warmup (``paper`` profile).

Ablations: ``stages=last`` pools only the last stage (= SimCLR at τ = 0.07, 2048-d input);
``gated=false`` concatenates the pooled stages without gates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from bench.core.errors import BenchError
from bench.models.encoders import encoder_channels
from bench.ssl.augment import ViewConfig
from bench.ssl.base import SSLMethod, SSLModel
from bench.ssl.config import PretrainConfig
from bench.ssl.method import EncoderContext, SearchDim
from bench.ssl.registry import register_method
from methods.simclr import PooledContrastModel


@dataclass(frozen=True)
class MatSSLParams:
    temperature: float = 0.07
    stages: str = "all"
    """``all``: fuse the four stages; ``last``: only the last stage (ablation)."""
    gated: bool = True
    """Multiply each pooled stage by a learnable sigmoid gate (``false``: plain concatenation)."""
    hidden_dim: int = 2048
    output_dim: int = 128


MATSSL_PROFILES = {
    "smoke": PretrainConfig(
        epochs=1, batch_size=4, view_size=64, steps_per_epoch=2, pool_limit=8, lr=0.05
    ),
    "quick": PretrainConfig(epochs=4, batch_size=16, view_size=96, steps_per_epoch=10, lr=0.1),
    "standard": PretrainConfig(epochs=100, batch_size=128, view_size=224, lr=0.1),
    "paper": PretrainConfig(epochs=100, batch_size=32, view_size=224, lr=0.1),
}


class GatedStageFusion(nn.Module):
    """GAP of each stage, times σ(gate) per channel, concatenated."""

    def __init__(self, channels: tuple[int, ...], gated: bool) -> None:
        super().__init__()
        self.gates = (
            nn.ParameterList(nn.Parameter(torch.ones(c)) for c in channels) if gated else None
        )
        self.out_dim = sum(channels)

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        pooled = [s.mean(dim=(2, 3)) for s in stages]
        if self.gates is not None:
            pooled = [p * torch.sigmoid(g) for p, g in zip(pooled, self.gates, strict=True)]
        return torch.cat(pooled, dim=1)


class MatSSLModel(PooledContrastModel):
    def __init__(
        self,
        encoder: nn.Module,
        fusion: GatedStageFusion,
        stage_count: int,
        head: nn.Module,
        temperature: float,
        view: ViewConfig,
        bn_views: str,
    ) -> None:
        super().__init__(encoder, head, temperature, view, bn_views)
        self.fusion = fusion
        self.stage_count = stage_count

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.encoder(x)[-self.stage_count :]
        return self.head(self.fusion(stages))


@register_method
class MatSSL(SSLMethod):
    name = "matssl"
    description = "MatSSL: gated fusion of the 4 pooled ResNet stages + SimCLR head, NT-Xent τ=0.07"
    Params = MatSSLParams
    profiles = MATSSL_PROFILES

    @classmethod
    def search_space(cls, profile: str) -> dict[str, SearchDim]:
        return {"temperature": SearchDim.real(0.03, 0.5, log=True), **super().search_space(profile)}

    def build_model(self, encoder: nn.Module, ctx: EncoderContext, cfg: PretrainConfig) -> SSLModel:
        p = self.params
        if p.stages not in ("all", "last"):
            raise BenchError(f"matssl: stages must be 'all' or 'last', got '{p.stages}'")
        channels = encoder_channels(encoder)
        if p.stages == "last":
            channels = channels[-1:]
        fusion = GatedStageFusion(channels, p.gated)
        head = SimCLRProjectionHead(fusion.out_dim, p.hidden_dim, p.output_dim)
        view = ViewConfig(size=cfg.view_size, scale=(0.2, 1.0), hflip=0.5, vflip=0.0, rot90=0.0)
        return MatSSLModel(encoder, fusion, len(channels), head, p.temperature, view, cfg.bn_views)
