"""MatSSL: gated multi-stage feature fusion for contrastive pretraining on micrographs.

Nguyen, Hieu & Lee, "MatSSL: Robust Self-Supervised Representation Learning for Metallographic
Image Segmentation", ICCVW 2025 (arXiv 2507.18184); seed code github.com/dhp510/MatSSL @ af98bfc.

Each of the four ResNet stages is globally average-pooled and multiplied by a learnable
per-channel sigmoid gate (initialised to 1, so σ = 0.731), the gated vectors are concatenated
(3840-d for ResNet-50) and fed to a SimCLR projection head (→2048→128 with BN on the output),
trained with NT-Xent at τ = 0.07 over two separately forwarded views (copies of one image are
left out of each other's negatives, ``bench.ssl.losses``). The gates and the head are discarded
after pretraining; only the encoder is kept.

- Views: the seed's recipe (``shared/reference/matssl.md`` §1.4, ``ssl_dataset.py`` L16–74): the
  whole image resized (to the working scale here), random resized crop of area 0.2–1, ratio
  3/4–4/3, horizontal flip p 0.5 (no vertical flip, no rotation), colour jitter p 0.8 with
  brightness 0.4 and contrast 0.4 (saturation 0.4, hue 0.1 and grayscale p 0.2 are identities on
  grayscale images), Gaussian blur p 0.5, kernel 10 % of the view (23 at 224²), σ ∈ [0.1, 2].
  This is also MoCo-v2's recipe. The area range applies with ``crop = "image"`` (matssl-paper);
  other profiles cut views in working pixels at their zoom range.
- Seed schedule (``matssl-paper``; §2): SGD lr 0.1, momentum 0.9, weight decay 1e-6, cosine to 0
  with no warmup, batch 32, 224² views, 5,000 steps (100 epochs of an SSL folder of unpublished
  size, ``bench.ssl.config.matssl_paper``); the seed's cosine is stepped once per epoch, here per
  step. ``pscl-paper`` uses the PSCL seed's schedule for comparison.

Ablations: ``stages=last`` pools only the last stage (= SimCLR at τ = 0.07, 2048-d input);
``gated=false`` concatenates the pooled stages without gates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.models.modules import SimCLRProjectionHead
from optuna.distributions import FloatDistribution
from torch import nn

from bench.core.errors import BenchError
from bench.models.encoders import encoder_channels
from bench.ssl.augment import ViewConfig, sized
from bench.ssl.base import SSLMethod, SSLModel
from bench.ssl.config import PretrainConfig, matssl_paper, pscl_paper
from bench.ssl.method import EncoderContext, SearchSpace
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


MATSSL_VIEW = ViewConfig(
    scale=(0.2, 1.0), hflip=0.5, jitter=0.8, brightness=0.4, contrast=0.4, blur=0.5
)
"""The seed's augmentation (module docstring)."""

MATSSL_PROFILES = {
    "smoke": PretrainConfig(steps=2, batch_size=4, view_size=64, pool_limit=8, lr=0.05),
    "quick": PretrainConfig(steps=40, batch_size=16, view_size=96, lr=0.1),
    "standard": PretrainConfig(steps=5000, batch_size=128, view_size=224, lr=0.1),
    "matssl-paper": matssl_paper(),
    "pscl-paper": pscl_paper(),
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
    def search_space(cls, profile: str) -> SearchSpace:
        return {
            "temperature": FloatDistribution(0.03, 0.5, log=True),
            **super().search_space(profile),
        }

    def build_model(self, encoder: nn.Module, ctx: EncoderContext, cfg: PretrainConfig) -> SSLModel:
        p = self.params
        if p.stages not in ("all", "last"):
            raise BenchError(f"matssl: stages must be 'all' or 'last', got '{p.stages}'")
        channels = encoder_channels(encoder)
        if p.stages == "last":
            channels = channels[-1:]
        fusion = GatedStageFusion(channels, p.gated)
        head = SimCLRProjectionHead(fusion.out_dim, p.hidden_dim, p.output_dim)
        view = self.views(cfg)["view"]
        return MatSSLModel(encoder, fusion, len(channels), head, p.temperature, view, cfg.bn_views)

    def views(self, cfg: PretrainConfig) -> dict[str, ViewConfig]:
        return {"view": sized(MATSSL_VIEW, cfg)}
