"""DenseCL: MoCo-v2 global contrast plus a dense, pixel-level contrast between matched cells.

Wang, Zhang, Shen, Kong & Li, "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training", CVPR 2021 (arXiv 2011.09157); reference code github.com/WXinlong/DenseCL
(openselfsup/models/densecl.py, DenseCLNeck in openselfsup/models/necks.py,
configs/selfsup/densecl/densecl_imagenet_200ep.py).

- Query network: the encoder, a global head (GAP → ``DenseCLProjectionHead`` 2048→128, MoCo-v2
  MLP) and a dense head (the same 2-layer MLP applied to every cell of the last feature map, i.e.
  1×1 convolutions, S×S grid = the stride-32 map). Key network: a momentum copy of all three
  (momentum 0.999, updated after every optimizer step), no gradient.
- Global loss: InfoNCE of the query against its key and a queue of past keys (lightly
  ``NTXentLoss`` with a memory bank), τ = 0.2.
- Dense loss: for every query cell the positive key is the key cell whose BACKBONE feature (the
  encoder's last map, before the dense head) is most cosine-similar (``match_cells``), as in the
  reference code; negatives come from a second queue that, as in the reference code, holds the
  L2-normalised average of each key image's dense projections. τ = 0.2.
- loss = (1 − λ)·global + λ·dense with λ = 0.5. The loss is one-directional (query = view 1,
  key = view 2) as in the reference code; ``bn_views`` has no effect (one online pass per step).
- Queues: 65536 in the paper; the pool here is small, so the size scales with the profile
  (``queue_size=0``: 256 smoke, 1024 quick, 4096 standard/paper). Both queues start as random unit
  vectors (as in the reference code) and are kept in checkpoints.
- Views: MoCo-v2's (crop scale 0.2–1, flip, jitter p 0.8 ±0.4, blur p 0.5 σ 0.1–2); colour,
  hue and grayscale terms are dropped for grayscale micrographs.
- Optimizer: SGD momentum 0.9, weight decay 1e-4, cosine, lr 0.03 at batch 256 scaled linearly
  with the batch (reference config). The ``paper`` profile keeps the MatSSL seed's comparison
  schedule (224² views, 100 epochs, batch 32) with that scaled lr.
- Not reproduced: shuffle-BN across GPUs (single device here; the key batch is one BN batch).

The exported encoder is the query (online) encoder, ``model.encoder``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import DenseCLProjectionHead
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.models.utils import deactivate_requires_grad, most_similar_index, update_momentum
from torch import nn

from bench.core.errors import BenchError
from bench.models.encoders import encoder_channels
from bench.ssl.augment import ImagePool, ViewConfig, make_views
from bench.ssl.base import SSLMethod, SSLModel
from bench.ssl.config import PretrainConfig
from bench.ssl.method import EncoderContext, SearchDim
from bench.ssl.registry import register_method


@dataclass(frozen=True)
class DenseCLParams:
    temperature: float = 0.2
    momentum: float = 0.999
    """EMA momentum of the key network."""
    queue_size: int = 0
    """Negatives per queue (global and dense); 0: the profile's size (``DENSECL_QUEUE``)."""
    loss_lambda: float = 0.5
    """Weight of the dense loss; the global loss gets 1 − λ."""
    hidden_dim: int = 2048
    output_dim: int = 128


DENSECL_PROFILES = {
    "smoke": PretrainConfig(
        epochs=1,
        batch_size=4,
        view_size=64,
        steps_per_epoch=2,
        pool_limit=8,
        lr=0.05,
        weight_decay=1e-4,
    ),
    "quick": PretrainConfig(
        epochs=4,
        batch_size=16,
        view_size=96,
        steps_per_epoch=10,
        lr=0.03 * 16 / 256,
        weight_decay=1e-4,
    ),
    "standard": PretrainConfig(
        epochs=100, batch_size=128, view_size=224, lr=0.03 * 128 / 256, weight_decay=1e-4
    ),
    "paper": PretrainConfig(
        epochs=100, batch_size=32, view_size=224, lr=0.03 * 32 / 256, weight_decay=1e-4
    ),
}

DENSECL_QUEUE = {"smoke": 256, "quick": 1024, "standard": 4096, "paper": 4096}


def match_cells(feat_q: torch.Tensor, feat_k: torch.Tensor) -> torch.Tensor:
    """For each cell of ``feat_q`` (B×C×H×W) the most cosine-similar cell of ``feat_k``.

    Returns a ``B×(H·W)`` long tensor of row-major cell indices (``h·W + w``) into ``feat_k``.
    """
    with torch.no_grad():
        return most_similar_index(
            feat_q.flatten(2).transpose(1, 2), feat_k.flatten(2).transpose(1, 2)
        )


def dense_info_nce(
    q_grid: torch.Tensor,
    k_grid: torch.Tensor,
    index: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE of every query cell against its matched key cell and the queue.

    ``q_grid`` and ``k_grid``: B×N×D, L2-normalised; ``index``: B×N, the key cell of each query
    cell; ``negatives``: D×K, L2-normalised.
    """
    positives = torch.gather(k_grid, 1, index.unsqueeze(-1).expand(-1, -1, k_grid.shape[-1]))
    pos = (q_grid * positives).sum(dim=-1, keepdim=True)
    neg = q_grid @ negatives.to(q_grid.dtype)
    logits = torch.cat([pos, neg], dim=-1).flatten(0, 1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def _persistent(bank: MemoryBankModule) -> MemoryBankModule:
    """lightly registers the queue as non-persistent buffers; keep it in checkpoints instead."""
    bank.register_buffer("bank", bank.bank, persistent=True)
    bank.register_buffer("bank_ptr", bank.bank_ptr, persistent=True)
    return bank


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
        dim = params.output_dim
        self.global_criterion = NTXentLoss(params.temperature, memory_bank_size=(queue_size, dim))
        _persistent(self.global_criterion.memory_bank)
        self.dense_queue = _persistent(MemoryBankModule((queue_size, dim)))
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
        view_q = make_views(pool, index, self.view, generator).images
        view_k = make_views(pool, index, self.view, generator).images
        feat_q = self.encoder(view_q)[-1]
        q_global, q_dense = self._heads(feat_q, self.global_head, self.dense_head)
        with torch.no_grad():
            feat_k = self.key_encoder(view_k)[-1]
            k_global, k_dense = self._heads(feat_k, self.key_global_head, self.key_dense_head)
            k_pooled = F.normalize(k_dense.mean(dim=1), dim=-1)
            k_dense = F.normalize(k_dense, dim=-1)
        loss_global = self.global_criterion(q_global, k_global)  # enqueues k_global
        cells = match_cells(feat_q.detach(), feat_k)
        _, negatives = self.dense_queue(k_pooled, update=q_dense.requires_grad)
        loss_dense = dense_info_nce(
            F.normalize(q_dense, dim=-1), k_dense, cells, negatives, self.temperature
        )
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
    def search_space(cls, profile: str) -> dict[str, SearchDim]:
        return {
            "temperature": SearchDim.real(0.05, 0.5, log=True),
            "loss_lambda": SearchDim.real(0.2, 0.8),
            **super().search_space(profile),
        }

    def build_model(self, encoder: nn.Module, ctx: EncoderContext, cfg: PretrainConfig) -> SSLModel:
        p = self.params
        queue = p.queue_size or DENSECL_QUEUE.get(ctx.profile, DENSECL_QUEUE["standard"])
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
            encoder, global_head, dense_head, p, queue, ViewConfig(size=cfg.view_size), cfg.bn_views
        )
