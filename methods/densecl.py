"""DenseCL: MoCo-v2 global contrast plus a dense, pixel-level contrast between matched cells.

Wang, Zhang, Shen, Kong & Li, "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training", CVPR 2021 (arXiv 2011.09157); reference code github.com/WXinlong/DenseCL
(openselfsup/models/densecl.py, DenseCLNeck in openselfsup/models/necks.py,
configs/selfsup/densecl/densecl_imagenet_200ep.py).

- Query network: the encoder, a global head (GAP → ``DenseCLProjectionHead`` 2048→128, MoCo-v2
  MLP) and a dense head (the same 2-layer MLP applied to every cell of the last feature map, i.e.
  1×1 convolutions, S×S grid = the stride-32 map). Key network: a momentum copy of all three
  (momentum 0.999, updated after every optimizer step), no gradient.
- Global loss: InfoNCE of the query against its key and a queue of past keys, τ = 0.2.
- Dense loss: for every query cell the positive key is the key cell whose BACKBONE feature (the
  encoder's last map, before the dense head) is most cosine-similar (``match_cells``), as in the
  reference code; negatives come from a second queue that, as in the reference code, holds the
  L2-normalised average of each key image's dense projections. τ = 0.2.
- loss = (1 − λ)·global + λ·dense with λ = 0.5. The loss is one-directional (query = view 1,
  key = view 2) as in the reference code; ``bn_views`` has no effect (one online pass per step).
- Queues (``bench.ssl.queue.KeyQueue``): 65,536 keys for 1.28 M images in the paper. Here the
  pool is tiny, so by default (``queue_size=0``) each queue holds as many keys as the pool has
  images (at least one batch), about one recent key per image instead of dozens of stale copies;
  and every key carries its image's id, and queue keys of the query's own image are left out of
  its negatives (``bench.ssl.losses.queue_info_nce``), so a query is never contrasted with
  another crop of itself. Both queues start as random unit vectors (id −1, as in the reference
  code) and are kept in checkpoints.
- Views: MoCo-v2's (Chen et al. 2020, arXiv 2003.04297; the reference config): random resized
  crop of area 0.2–1, ratio 3/4–4/3, horizontal flip p 0.5, colour jitter p 0.8 with brightness
  0.4 and contrast 0.4 (saturation 0.4, hue 0.1 and grayscale p 0.2 are identities on grayscale
  micrographs), Gaussian blur p 0.5 with σ ∈ [0.1, 2]. The area range applies with
  ``crop = "image"`` (matssl-paper); other profiles cut views in working pixels at their zoom.
- Optimizer: SGD momentum 0.9, weight decay 1e-4, cosine, lr 0.03 at batch 256 scaled linearly
  with the batch (reference config). ``matssl-paper`` keeps the MatSSL seed's comparison schedule
  (224² views, batch 32, 5,000 steps) with that scaled lr; ``pscl-paper`` the PSCL seed's.
- Not reproduced: shuffle-BN across GPUs (single device here; the key batch is one BN batch).

The exported encoder is the query (online) encoder, ``model.encoder``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from lightly.models.modules import DenseCLProjectionHead
from lightly.models.utils import deactivate_requires_grad, most_similar_index, update_momentum
from optuna.distributions import FloatDistribution
from torch import nn

from bench.core.errors import BenchError
from bench.core.precision import fp32_normalize
from bench.models.encoders import encoder_channels
from bench.ssl.augment import ImagePool, ViewConfig, make_views, sized
from bench.ssl.base import SSLMethod, SSLModel
from bench.ssl.config import PretrainConfig, matssl_paper, pscl_paper
from bench.ssl.losses import queue_info_nce
from bench.ssl.method import EncoderContext, SearchSpace
from bench.ssl.queue import KeyQueue
from bench.ssl.registry import register_method


@dataclass(frozen=True)
class DenseCLParams:
    temperature: float = 0.2
    momentum: float = 0.999
    """EMA momentum of the key network."""
    queue_size: int = 0
    """Keys per queue (global and dense); 0: the pool's image count, at least one batch."""
    loss_lambda: float = 0.5
    """Weight of the dense loss; the global loss gets 1 − λ."""
    hidden_dim: int = 2048
    output_dim: int = 128


MOCO_V2_VIEW = ViewConfig(
    scale=(0.2, 1.0), hflip=0.5, jitter=0.8, brightness=0.4, contrast=0.4, blur=0.5
)
"""MoCo-v2's augmentation (module docstring)."""

DENSECL_PROFILES = {
    "smoke": PretrainConfig(
        steps=2, batch_size=4, view_size=64, pool_limit=8, lr=0.05, weight_decay=1e-4
    ),
    "quick": PretrainConfig(
        steps=40, batch_size=16, view_size=96, lr=0.03 * 16 / 256, weight_decay=1e-4
    ),
    "standard": PretrainConfig(
        steps=5000, batch_size=128, view_size=224, lr=0.03 * 128 / 256, weight_decay=1e-4
    ),
    "matssl-paper": matssl_paper(lr=0.03 * 32 / 256, weight_decay=1e-4),
    "pscl-paper": pscl_paper(),
}


def match_cells(feat_q: torch.Tensor, feat_k: torch.Tensor) -> torch.Tensor:
    """For each cell of ``feat_q`` (B×C×H×W) the most cosine-similar cell of ``feat_k``.

    Returns a ``B×(H·W)`` long tensor of row-major cell indices (``h·W + w``) into ``feat_k``.
    """
    with torch.no_grad():
        return most_similar_index(
            feat_q.flatten(2).transpose(1, 2), feat_k.flatten(2).transpose(1, 2)
        )


def dense_positives(k_grid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The matched key cell of every query cell: ``k_grid`` B×N×D gathered by ``index`` B×N."""
    return torch.gather(k_grid, 1, index.unsqueeze(-1).expand(-1, -1, k_grid.shape[-1]))


class DenseCLModel(SSLModel):
    def __init__(
        self,
        encoder: nn.Module,
        global_head: nn.Module,
        dense_head: nn.Module,
        params: DenseCLParams,
        queue_size: int,
        view: ViewConfig,
        bn_views: str,
    ) -> None:
        super().__init__(encoder, bn_views)
        self.global_head = global_head
        self.dense_head = dense_head
        self.key_encoder = copy.deepcopy(encoder)
        self.key_global_head = copy.deepcopy(global_head)
        self.key_dense_head = copy.deepcopy(dense_head)
        for module in (self.key_encoder, self.key_global_head, self.key_dense_head):
            deactivate_requires_grad(module)
        self.global_queue = KeyQueue(queue_size, params.output_dim)
        self.dense_queue = KeyQueue(queue_size, params.output_dim)
        self.temperature = params.temperature
        self.momentum = params.momentum
        self.loss_lambda = params.loss_lambda
        self.view = view

    @staticmethod
    def _heads(
        feat: torch.Tensor, global_head: nn.Module, dense_head: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Global projection (B×D) and per-cell projections (B×N×D, not normalised)."""
        return global_head(feat.mean(dim=(2, 3))), dense_head(feat.flatten(2).transpose(1, 2))

    def training_loss(
        self, pool: ImagePool, index: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        ids = pool.ids[index]
        view_q = make_views(pool, index, self.view, generator).images
        view_k = make_views(pool, index, self.view, generator).images
        feat_q = self.encoder(view_q)[-1]
        q_global, q_dense = self._heads(feat_q, self.global_head, self.dense_head)
        with torch.no_grad():
            feat_k = self.key_encoder(view_k)[-1]
            k_global, k_dense = self._heads(feat_k, self.key_global_head, self.key_dense_head)
            k_global = fp32_normalize(k_global)
            k_pooled = fp32_normalize(k_dense.mean(dim=1))
            k_dense = fp32_normalize(k_dense)
        loss_global = queue_info_nce(
            fp32_normalize(q_global),
            k_global,
            self.global_queue.keys.clone(),  # the push below must not change the graph's copy
            self.global_queue.ids.clone(),
            ids,
            self.temperature,
        )
        cells = match_cells(feat_q.detach(), feat_k)
        loss_dense = queue_info_nce(
            fp32_normalize(q_dense),
            dense_positives(k_dense, cells),
            self.dense_queue.keys.clone(),
            self.dense_queue.ids.clone(),
            ids,
            self.temperature,
        )
        if q_global.requires_grad:  # training passes enqueue this batch's keys, after the loss
            self.global_queue.push(k_global, ids)
            self.dense_queue.push(k_pooled, ids)
        return (1 - self.loss_lambda) * loss_global + self.loss_lambda * loss_dense

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        update_momentum(self.encoder, self.key_encoder, self.momentum)
        update_momentum(self.global_head, self.key_global_head, self.momentum)
        update_momentum(self.dense_head, self.key_dense_head, self.momentum)


@register_method
class DenseCL(SSLMethod):
    name = "densecl"
    description = "DenseCL: MoCo-v2 global + dense InfoNCE on feature-matched cells, two queues"
    Params = DenseCLParams
    profiles = DENSECL_PROFILES

    @classmethod
    def search_space(cls, profile: str) -> SearchSpace:
        return {
            "temperature": FloatDistribution(0.05, 0.5, log=True),
            "loss_lambda": FloatDistribution(0.2, 0.8),
            **super().search_space(profile),
        }

    def views(self, cfg: PretrainConfig) -> dict[str, ViewConfig]:
        return {"view": sized(MOCO_V2_VIEW, cfg)}

    def build_model(self, encoder: nn.Module, ctx: EncoderContext, cfg: PretrainConfig) -> SSLModel:
        p = self.params
        queue = p.queue_size or max(cfg.batch_size, len(ctx.pool_names))
        if queue < cfg.batch_size:
            raise BenchError(f"densecl: queue_size {queue} must be ≥ batch_size {cfg.batch_size}")
        if not 0.0 <= p.momentum < 1.0:
            raise BenchError(f"densecl: momentum must be in [0, 1), got {p.momentum}")
        if not 0.0 <= p.loss_lambda <= 1.0:
            raise BenchError(f"densecl: loss_lambda must be in [0, 1], got {p.loss_lambda}")
        channels = encoder_channels(encoder)[-1]
        global_head = DenseCLProjectionHead(channels, p.hidden_dim, p.output_dim)
        dense_head = DenseCLProjectionHead(channels, p.hidden_dim, p.output_dim)
        return DenseCLModel(
            encoder, global_head, dense_head, p, queue, self.views(cfg)["view"], cfg.bn_views
        )
