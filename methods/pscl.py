"""PSCL: image-level plus class-aware patch-level contrast, with classes taken from the shots.

Source: the PSCL seed code, github.com/neulmc/PSCL @ 9b012a9 (Sci. Rep. 2025,
doi 10.1038/s41598-025-32855-5), as described in ``shared/reference/pscl.md``; this is a
re-implementation of its PSCL-SimCLR variant (the headline one) in our own words, adapted to the
harness' smp ResNet encoders.

**Fairness note.** PSCL is not label-free: its pretraining reads the masks of the labeled shots of
the current draw (``uses_labels = True``), so it is re-pretrained for every draw (the shots' stems,
masks and the draw are part of the cache key), while SimCLR / BYOL / DenseCL / MatSSL pretrain once
without labels. Report it as "SSL + the shots' labels".

How one step works (``PSCLModel.training_loss``):

- **Batch.** The engine's ``B`` unlabeled pool images plus ``L`` labeled shots: all shots when
  there are at most ``labeled_per_batch`` of them (the seed: its single shot in every batch), else a
  fresh random subset of that many per step, so every shot is seen equally often on average. A
  shot that is also a pool image (pools drawn from a split's training images) keeps that image's
  id, so the image-level loss never takes its pool copy as a negative.
- **Views with known geometry.** View 1 is a square box of the image resized to ``view_size``²:
  with ``crop = "working"`` (every profile) a box of ``view_size · z`` working pixels per side,
  zoom ``z`` in the profile's range (``pscl-paper``: exactly 1, i.e. a 384² tile at native
  scale, as the seed's whole 376² tiles); with ``crop = "image"`` an area fraction
  ``view1_scale_min..max`` of the image. View 2 is a random sub-box of view 1's box, 80–100 % per
  side drawn independently (the seed's r1, r2), then a vertical flip with p = 0.5 and rot90 by
  k ∈ {0..3} (the seed's flip + rot90, which cover all 8 symmetries). Both views get
  brightness/contrast jitter of ±0.16 with p = 0.8 (the seed's ColorJitter(0.16, 0.16, 0.16,
  0.04); saturation and hue are identities on grayscale images; the seed used no blur).
  ``correspond`` maps every view-2 feature cell to the view-1 cell containing the same image
  point (the view-2 cell's centre), exactly, by pushing a grid of cell-centre coordinates through
  the same flip/rot90 as the image. Where several view-2 cells land on one view-1 cell only the
  one nearest its centre is kept, so no two sampled cells share a positive.
- **Network and scales** (``network``). ``whole`` (the seed, default of ``pscl-paper``): the whole
  segmenter body is pretrained — the encoder and the U-Net decoder of the run's architecture —
  with patch maps at decoder strides 4, 2, 1 (the seed's x4up1..3 at 1/4, 1/2, 1/1), and both are
  exported, so fine-tuning starts with the pretrained decoder. ``encoder`` (default elsewhere, to
  compare with the encoder-only methods): encoder stages at strides 16, 8, 4 (``features[-2],
  [-3], [-4]``), only the encoder exported. Each scale has its own per-cell projection head (a
  1×1-conv MLP: Linear → LayerNorm → ReLU → Linear, 64-d; the seed's heads, without its channel
  groups), and ``samples · sample_ratio**s`` = 4 / 8 / 16 cells per class from coarse to fine.
- **Labeled cells.** The shots' masks follow view 2's geometry; each cell gets its class-area
  fractions (``roi_align`` with one sample per pixel, then the same flip/rot90). A cell is eligible
  for class c when at least ``min_fraction`` of it is c; per class, the K eligible cells with the
  highest fraction are taken over all shots of the batch (random tie-breaking, rarest class first,
  no cell reused across classes). A class with fewer than K eligible cells is **skipped** for that
  step and scale: its slots stay empty (the seed filled them with cells of other classes).
- **Unlabeled cells.** Templates are the labeled cells' view-2 embeddings (detached). For every
  unlabeled image, each template takes its most similar (cosine) free view-2 cell, one-to-one
  (``match_templates``: rounds in which every unmatched template proposes its best free cell and a
  cell wanted by several goes to the most similar template; taken cells are masked with -inf). The
  cell inherits the template's class, so each image gives K cells per present class and scale. The
  seed used raw dot products and a sequential greedy that only approximately avoided reuse.
- **Loss.** Image level: NT-Xent (lightly, τ = 0.5) on the pooled last stage through a 2-layer
  projection head (→128→64, no BN, as the seed). Patch level, per scale: NT-Xent over the sampled
  cells of both views, the positive being the same location in the other view and the negatives
  every cell of **another** class (same-class cells other than the positive are left out of the
  denominator), τ = 0.5. Total = (1 − α)·image + α·mean over scales, α = 0.7 (the seed's
  ``global_local_ratio``); scales where fewer than two classes were sampled are left out of the
  mean.

Defaults: ``pscl-paper`` is the seed's pretraining (Adam 1e-4, no weight decay, constant LR,
batch 8 + the shot(s), 4,800 steps — 200 epochs of at most 198 images, see
``bench.ssl.config.pscl_paper`` — whole-network, 384² views at zoom 1: the seed's 376² rounded up
to a multiple of 32 for the U-Net). ``standard`` keeps the seed's optimiser with a GPU-sized batch
and the harness' 224² / 5,000-step budget; ``matssl-paper`` the MatSSL seed's comparison budget;
``smoke`` and ``quick`` are small CPU-sized runs with a larger LR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightly.models.modules import SimCLRProjectionHead
from optuna.distributions import FloatDistribution
from torch import nn
from torchvision.ops import roi_align

from bench.core.errors import BenchError
from bench.core.precision import fp32_matmul, fp32_normalize
from bench.data.images import LabeledImage
from bench.models.scale import labeled_at_scale
from bench.models.segmenter import PretrainedWeights, create_segmenter
from bench.ssl.augment import (
    ImagePool,
    ViewConfig,
    crop_resize,
    flip_rotate,
    jitter,
    sample_boxes,
    sized,
    to_model_input,
)
from bench.ssl.base import SSLMethod, SSLModel
from bench.ssl.config import PretrainConfig, matssl_paper, pscl_paper
from bench.ssl.losses import nt_xent
from bench.ssl.method import EncoderContext, SearchSpace
from bench.ssl.registry import register_method

STRIDES = {"encoder": (16, 8, 4), "whole": (4, 2, 1)}
"""Strides of the patch maps, coarse → fine: encoder stages ``features[-2], [-3], [-4]``, or the
last three U-Net decoder blocks."""
NETWORKS = ("whole", "encoder")
TIE_NOISE = 1e-3
"""Random tie-breaking noise added to the class fractions when ranking labeled cells."""


@dataclass(frozen=True)
class PSCLParams:
    temperature: float = 0.5
    """τ of both the image and the patch loss (seed ``train.py``)."""
    patch_weight: float = 0.7
    """α: loss = (1 − α)·image + α·patch (seed ``global_local_ratio``)."""
    samples: int = 4
    """Cells per class at the coarsest scale (seed K = 4 for PSCL-SimCLR)."""
    sample_ratio: int = 2
    """Growth of the per-class cell count per finer scale: K_s = samples · ratio**s."""
    min_fraction: float = 0.5
    """A labeled cell counts for class c when at least this fraction of its pixels is c."""
    proj_dim: int = 64
    hidden_dim: int = 128
    labeled_per_batch: int = 4
    """Shots added to every batch; more shots than this: a random subset per step (0: all)."""
    view1_scale_min: float = 0.25
    view1_scale_max: float = 1.0
    """Area fraction of the image covered by view 1 with ``crop = "image"``."""
    sub_min: float = 0.8
    """View 2 covers this to 100 % of view 1's box per side (seed: 0.8)."""
    jitter: float = 0.16
    """Brightness/contrast jitter strength, applied with p = 0.8 (seed ColorJitter 0.16)."""
    network: str = ""
    """``whole`` (encoder + decoder, the seed) or ``encoder``; empty: the profile's (``whole`` for
    pscl-paper, ``encoder`` otherwise)."""


def _adam(**kw) -> PretrainConfig:
    return PretrainConfig(optimizer="adam", weight_decay=0.0, schedule="constant", **kw)


PSCL_PROFILES = {
    "smoke": _adam(steps=2, batch_size=4, view_size=64, pool_limit=8, lr=1e-3),
    "quick": _adam(steps=40, batch_size=8, view_size=96, lr=3e-4),
    "standard": _adam(steps=5000, batch_size=32, view_size=224, lr=1e-4),
    "matssl-paper": matssl_paper(optimizer="adam", lr=1e-4, weight_decay=0.0, schedule="constant"),
    "pscl-paper": pscl_paper(zoom_min=1.0, zoom_max=1.0),
}


def pscl_view(params: PSCLParams, cfg: PretrainConfig) -> ViewConfig:
    """View 1's crop and both views' jitter (module docstring); view 2 is a sub-box of view 1."""
    recipe = ViewConfig(
        scale=(params.view1_scale_min, params.view1_scale_max),
        ratio=(1.0, 1.0),
        hflip=0.0,
        jitter=0.8,
        brightness=params.jitter,
        contrast=params.jitter,
        blur=0.0,
    )
    return sized(recipe, cfg)


# ---------------------------------------------------------------------------------------------
# Geometry


@dataclass
class SubView:
    """View 2 relative to view 1: the sub-box (fractions of view 1's box) and flips/rotation."""

    sub: torch.Tensor
    """``n×4`` (y0, x0, h, w) as fractions of view 1's box."""
    hflip: torch.Tensor
    vflip: torch.Tensor
    rot90: torch.Tensor


def _rand(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def sample_subviews(
    n: int, sub_min: float, generator: torch.Generator, device: torch.device
) -> SubView:
    h = sub_min + (1 - sub_min) * _rand(n, generator, device)
    w = sub_min + (1 - sub_min) * _rand(n, generator, device)
    y0 = (1 - h) * _rand(n, generator, device)
    x0 = (1 - w) * _rand(n, generator, device)
    vflip = _rand(n, generator, device) < 0.5
    rot = torch.randint(0, 4, (n,), generator=generator, device=generator.device).to(device)
    return SubView(torch.stack([y0, x0, h, w], 1), torch.zeros_like(vflip), vflip, rot)


def sub_boxes(boxes: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2) of the sub-views inside ``boxes``."""
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    x1 = boxes[:, 0] + sub[:, 1] * bw
    y1 = boxes[:, 1] + sub[:, 0] * bh
    return torch.stack([x1, y1, x1 + sub[:, 3] * bw, y1 + sub[:, 2] * bh], 1)


def correspond(view: SubView, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each view-2 cell of a ``grid×grid`` map, the view-1 cell at the same location.

    Returns ``index`` (``n×grid²``, flat row-major view-1 cell) and ``keep`` (``n×grid²``): True for
    one view-2 cell per view-1 cell (the one whose centre lands nearest the view-1 cell's centre;
    ties: the lower index), so kept cells never share a view-1 partner.
    """
    n, device = view.sub.shape[0], view.sub.device
    centres = (torch.arange(grid, device=device, dtype=torch.float32) + 0.5) / grid
    coords = torch.stack(torch.meshgrid(centres, centres, indexing="ij"))  # 2×G×G: (u, v)
    # view 2 = flip_rotate(crop); moving the coordinate image the same way gives, at every view-2
    # cell, the crop-frame position of its content
    coords = flip_rotate(
        coords.expand(n, 2, grid, grid).contiguous(), view.hflip, view.vflip, view.rot90
    )
    y = (view.sub[:, 0, None, None] + view.sub[:, 2, None, None] * coords[:, 0]) * grid
    x = (view.sub[:, 1, None, None] + view.sub[:, 3, None, None] * coords[:, 1]) * grid
    iy = y.floor().clamp(0, grid - 1)
    ix = x.floor().clamp(0, grid - 1)
    index = (iy * grid + ix).long().flatten(1)
    dist = ((y - iy - 0.5) ** 2 + (x - ix - 0.5) ** 2).flatten(1)
    cells = grid * grid
    # lexicographic key (view-1 cell, distance, view-2 index): keep the first of every view-1 cell
    order = torch.argsort(dist, dim=1, stable=True)
    sorted_index = index.gather(1, order)
    ranks = torch.arange(cells, device=device).expand(n, cells)
    first = torch.full((n, cells), cells, device=device, dtype=torch.long)
    first = first.scatter_reduce(1, sorted_index, ranks, reduce="amin")
    keep_sorted = first.gather(1, sorted_index) == ranks
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    return index, keep


def cell_fractions(
    masks: torch.Tensor, num_classes: int, boxes: torch.Tensor, view: SubView, grid: int
) -> torch.Tensor:
    """Class-area fractions of every view-2 cell: ``n×C×grid²`` from ``n×1×H×W`` id masks."""
    classes = torch.arange(num_classes, device=masks.device, dtype=masks.dtype).view(1, -1, 1, 1)
    onehot = (masks == classes).float()
    rois = torch.cat(
        [torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], 1
    )
    # sampling_ratio=0: ceil(bin size) samples per bin, i.e. about one per pixel → area fraction
    frac = roi_align(
        onehot, rois, output_size=grid, spatial_scale=1.0, sampling_ratio=0, aligned=True
    )
    frac = flip_rotate(frac, view.hflip, view.vflip, view.rot90)
    return frac.flatten(2)


# ---------------------------------------------------------------------------------------------
# Sampling and matching


def sample_labeled(
    frac: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    min_fraction: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """K cells per class from the labeled images; classes with too few cells are skipped.

    ``frac``: ``L×C×N`` class fractions; ``candidates``: ``L×N`` usable cells. Returns ``image``,
    ``cell`` and ``cls`` (``M = K · present classes`` rows, in class order) and ``present`` (``C``
    bool). Eligible: fraction ≥ ``min_fraction``; ranked by fraction with random tie-breaking over
    all labeled images together; rarest class first; no cell is used twice.
    """
    n_img, n_cls, n_cell = frac.shape
    device = frac.device
    scores = frac.permute(1, 0, 2).reshape(n_cls, n_img * n_cell)
    eligible = (scores >= min_fraction) & candidates.reshape(1, -1)
    noise = torch.rand(scores.shape, generator=generator, device=generator.device).to(device)
    scores = torch.where(eligible, scores + TIE_NOISE * noise, torch.full_like(scores, -torch.inf))
    taken = torch.zeros(n_img * n_cell, dtype=torch.bool, device=device)
    picks: list[torch.Tensor | None] = [None] * n_cls
    for c in eligible.sum(1).argsort(stable=True).tolist():
        avail = scores[c].masked_fill(taken, -torch.inf)
        if int(torch.isfinite(avail).sum()) < k:
            continue  # too rare in the shots: skipped, its slots are not filled by others
        idx = avail.topk(k).indices
        taken[idx] = True
        picks[c] = idx
    present = torch.tensor([p is not None for p in picks], device=device)
    chosen = [p for p in picks if p is not None]
    if not chosen:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, empty, present
    flat = torch.cat(chosen)
    cls = torch.cat(
        [
            torch.full((k,), c, dtype=torch.long, device=device)
            for c, p in enumerate(picks)
            if p is not None
        ]
    )
    return flat // n_cell, flat % n_cell, cls, present


def match_templates(sim: torch.Tensor) -> torch.Tensor:
    """One-to-one greedy matching of templates to cells: ``B×M×N`` similarities → ``B×M`` cells.

    In rounds, every unmatched template proposes its most similar free cell; a cell proposed by
    several templates goes to the most similar one (ties: the lower template index); matched cells
    are masked with -inf. Cells already at -inf are never chosen; a template left without a free
    cell gets -1.
    """
    n_img, n_tmp, n_cell = sim.shape
    device = sim.device
    assign = torch.full((n_img, n_tmp), -1, dtype=torch.long, device=device)
    open_ = torch.ones(n_img, n_tmp, dtype=torch.bool, device=device)
    avail = sim.clone()
    tmp_index = torch.arange(n_tmp, device=device).expand(n_img, n_tmp)
    while True:
        best, cell = avail.max(dim=2)
        propose = open_ & torch.isfinite(best)
        if not bool(propose.any()):
            return assign
        bid = best.masked_fill(~propose, -torch.inf)
        top = torch.full((n_img, n_cell), -torch.inf, device=device, dtype=bid.dtype)
        top = top.scatter_reduce(1, cell, bid, reduce="amax")
        win = propose & (bid == top.gather(1, cell))
        first = torch.full((n_img, n_cell), n_tmp, device=device, dtype=torch.long)
        first = first.scatter_reduce(1, cell, tmp_index.masked_fill(~win, n_tmp), reduce="amin")
        win &= first.gather(1, cell) == tmp_index
        assign = torch.where(win, cell, assign)
        open_ &= ~win
        taken = torch.zeros(n_img, n_cell, dtype=torch.long, device=device)
        taken = taken.scatter_reduce(1, cell, win.long(), reduce="amax").bool()
        avail = avail.masked_fill(taken[:, None, :] | ~open_[:, :, None], -torch.inf)


# ---------------------------------------------------------------------------------------------
# Losses


def negative_mask(cls: torch.Tensor) -> torch.Tensor:
    """``2P×2P``: True where column j enters row i's denominator (its positive or another class).

    Rows/columns are ``[view-1 cells; view-2 cells]``; row i's positive is i ± P.
    """
    p = cls.shape[0]
    both = torch.cat([cls, cls])
    keep = both[:, None] != both[None, :]
    rows = torch.arange(2 * p, device=cls.device)
    keep[rows, (rows + p) % (2 * p)] = True
    return keep


def patch_contrast(
    q: torch.Tensor, k: torch.Tensor, cls: torch.Tensor, temperature: float
) -> torch.Tensor:
    """NT-Xent over cells: positive = same location in the other view, negatives = other classes."""
    p = cls.shape[0]
    z = fp32_normalize(torch.cat([q, k]), dim=1)
    logits = fp32_matmul(z, z.T) / temperature
    logits = logits.masked_fill(~negative_mask(cls), -torch.inf)
    rows = torch.arange(2 * p, device=cls.device)
    return F.cross_entropy(logits, (rows + p) % (2 * p))


# ---------------------------------------------------------------------------------------------
# Model


class CellHead(nn.Module):
    """A 1×1-conv projection MLP, applied per cell: ``B×C×H×W`` → ``B×(H·W)×out``."""

    def __init__(self, in_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out),
        )

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net(fmap.flatten(2).transpose(1, 2))


class MaskPool:
    """The shots' class-id masks, padded with 255 (no class) into one ``L×1×H×W`` uint8 tensor."""

    def __init__(self, masks: list[np.ndarray], device: torch.device) -> None:
        height = max(m.shape[0] for m in masks)
        width = max(m.shape[1] for m in masks)
        data = np.full((len(masks), 1, height, width), 255, dtype=np.uint8)
        for i, m in enumerate(masks):
            data[i, 0, : m.shape[0], : m.shape[1]] = m
        self.data = torch.from_numpy(data).to(device)


class PSCLModel(SSLModel):
    compile_whole_step = False  # sampled cell counts vary per step

    def __init__(
        self,
        encoder: nn.Module,
        shots: list[LabeledImage],
        shot_ids: list[int],
        num_classes: int,
        params: PSCLParams,
        view: ViewConfig,
        bn_views: str,
        device: torch.device,
        decoder: nn.Module | None = None,
        arch: str | None = None,
    ) -> None:
        """``decoder`` (a U-Net decoder of ``arch`` for ``encoder``): pretrain the whole body, with
        patch maps at decoder strides; None: encoder only. ``shots`` at the working scale."""
        super().__init__(encoder, bn_views)
        self.p = params
        self.num_classes = num_classes
        self.view = view
        self.view_size = view.size
        self.decoder, self.arch = decoder, arch
        self.strides = STRIDES["whole" if decoder is not None else "encoder"]
        channels = encoder.out_channels
        if decoder is None:
            map_channels = [channels[-2 - s] for s in range(len(self.strides))]
        else:
            map_channels = [block.conv2[0].out_channels for block in decoder.blocks[-3:]]
        self.image_head = SimCLRProjectionHead(
            channels[-1], params.hidden_dim, params.proj_dim, batch_norm=False
        )
        self.cell_heads = nn.ModuleList(
            CellHead(c, min(c, params.hidden_dim), params.proj_dim) for c in map_channels
        )
        self.shot_pool = ImagePool([s.image for s in shots], device, ids=shot_ids)
        self.shot_masks = MaskPool([s.mask for s in shots], device)
        self.last_counts: list[torch.Tensor] = []
        """Per scale: cells per class in the last step's patch loss (diagnostics, tests)."""

    def exported(self) -> PretrainedWeights:
        if self.decoder is None:
            return super().exported()
        cpu = {k: v.detach().cpu().contiguous() for k, v in self.decoder.state_dict().items()}
        return PretrainedWeights(super().exported().encoder, cpu, self.arch)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last encoder stage (image level) and the patch maps, coarse → fine."""
        stages = self.encoder(x)
        if self.decoder is None:
            return stages[-1], [stages[-2 - s] for s in range(len(self.strides))]
        maps: list[torch.Tensor] = []
        hooks = [
            block.register_forward_hook(lambda _m, _i, out: maps.append(out))
            for block in self.decoder.blocks[-3:]
        ]
        try:
            self.decoder(stages)
        finally:
            for hook in hooks:
                hook.remove()
        return stages[-1], maps

    def view_passes(self, batch_size: int) -> int:
        shots = len(self.shot_pool)
        if self.p.labeled_per_batch > 0:
            shots = min(shots, self.p.labeled_per_batch)
        return 2 * (batch_size + shots)

    def samples_at(self, scale: int) -> int:
        return self.p.samples * self.p.sample_ratio**scale

    def _pick_shots(self, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        total, limit = len(self.shot_pool), self.p.labeled_per_batch
        if limit <= 0 or total <= limit:
            return torch.arange(total, device=device)
        order = torch.randperm(total, generator=generator, device=generator.device)
        return order[:limit].to(device)

    def make_views(self, pool: ImagePool, index: torch.Tensor, generator: torch.Generator):
        """Both views of ``index`` + a draw of shots; returns views, shot ids, boxes, geometry."""
        device = pool.data.device
        if self.shot_pool.device != device:
            self.shot_pool.to(device)
            self.shot_masks.data = self.shot_masks.data.to(device)
        shots = self._pick_shots(generator, device)
        n_u = len(index)
        sizes = torch.cat([pool.sizes[index], self.shot_pool.sizes[shots]])
        box1 = sample_boxes(sizes, self.view, generator)
        view = sample_subviews(len(sizes), self.p.sub_min, generator, device)
        box2 = sub_boxes(box1, view.sub)
        size = self.view_size
        x1 = torch.cat(
            [
                crop_resize(pool, index, box1[:n_u], size),
                crop_resize(self.shot_pool, shots, box1[n_u:], size),
            ]
        )
        x2 = torch.cat(
            [
                crop_resize(pool, index, box2[:n_u], size),
                crop_resize(self.shot_pool, shots, box2[n_u:], size),
            ]
        )
        x2 = flip_rotate(x2, view.hflip, view.vflip, view.rot90)
        x1 = to_model_input(jitter(x1, self.view, generator))
        x2 = to_model_input(jitter(x2, self.view, generator))
        return x1, x2, shots, box2, view

    def training_loss(
        self, pool: ImagePool, index: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        x1, x2, shots, box2, view = self.make_views(pool, index, generator)
        (top1, maps1), (top2, maps2) = self.forward_views(self.features, x1, x2)
        ids = torch.cat([pool.ids[index], self.shot_pool.ids[shots]])
        image_loss = nt_xent(
            self.image_head(top1.mean(dim=(2, 3))),
            self.image_head(top2.mean(dim=(2, 3))),
            self.p.temperature,
            ids,
        )
        n_u = len(index)
        lab_view = SubView(view.sub[n_u:], view.hflip[n_u:], view.vflip[n_u:], view.rot90[n_u:])
        patch_losses, self.last_counts = [], []
        for s, stride in enumerate(self.strides):
            grid = self.view_size // stride
            m1, m2 = maps1[s], maps2[s]
            if m1.shape[-2:] != (grid, grid):
                raise BenchError(
                    f"pscl: expected a {grid}×{grid} map at stride {stride}, got "
                    f"{tuple(m1.shape[-2:])}; view_size must be a multiple of 32"
                )
            z1, z2 = self.cell_heads[s](m1), self.cell_heads[s](m2)
            index1, keep = correspond(view, grid)
            frac = cell_fractions(
                self.shot_masks.data[shots], self.num_classes, box2[n_u:], lab_view, grid
            )
            loss = self.patch_loss(z1, z2, index1, keep, frac, self.samples_at(s), generator)
            if loss is not None:
                patch_losses.append(loss)
        a = self.p.patch_weight
        if not patch_losses:
            return (1 - a) * image_loss
        return (1 - a) * image_loss + a * torch.stack(patch_losses).mean()

    @torch.compiler.disable  # data-dependent shapes and loops: keep it out of compiled graphs
    def patch_loss(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        index1: torch.Tensor,
        keep: torch.Tensor,
        frac: torch.Tensor,
        k: int,
        generator: torch.Generator,
    ) -> torch.Tensor | None:
        """One scale: labeled sampling, unlabeled matching, class-aware NT-Xent (None: < 2 classes).

        ``z1``/``z2``: ``n×G²×D`` cell embeddings of views 1/2 (unlabeled images first, then the
        shots); ``index1``/``keep`` from ``correspond``; ``frac``: the shots' ``L×C×G²``.
        """
        n_u = z1.shape[0] - frac.shape[0]
        img, cell, cls, _ = sample_labeled(frac, keep[n_u:], k, self.p.min_fraction, generator)
        img = img + n_u
        if n_u > 0 and len(cls) > 0:
            with torch.no_grad(), torch.autocast(z2.device.type, enabled=False):
                templates = fp32_normalize(z2[img, cell].detach(), dim=1)
                feats = fp32_normalize(z2[:n_u].detach(), dim=2)
                sim = torch.einsum("bnd,md->bmn", feats, templates)
                sim = sim.masked_fill(~keep[:n_u, None, :], -torch.inf)
                assign = match_templates(sim)
            matched = assign >= 0
            u_img = torch.arange(n_u, device=z1.device)[:, None].expand_as(assign)[matched]
            img = torch.cat([u_img, img])
            cell = torch.cat([assign[matched], cell])
            cls = torch.cat([cls[None].expand_as(assign)[matched], cls])
        self.last_counts.append(torch.bincount(cls, minlength=self.num_classes))
        if cls.unique().numel() < 2:
            return None
        q = z1[img, index1[img, cell]]
        k2 = z2[img, cell]
        return patch_contrast(q, k2, cls, self.p.temperature)


@register_method
class PSCL(SSLMethod):
    name = "pscl"
    description = (
        "PSCL: image NT-Xent + class-aware patch NT-Xent at 3 scales (whole U-Net in pscl-paper), "
        "classes from the shots' masks (uses the labels; re-pretrained per draw)"
    )
    uses_labels = True
    Params = PSCLParams
    profiles = PSCL_PROFILES

    @classmethod
    def search_space(cls, profile: str) -> SearchSpace:
        return {
            "temperature": FloatDistribution(0.05, 1.0, log=True),
            "patch_weight": FloatDistribution(0.3, 0.9),
            **super().search_space(profile),
        }

    def network(self, profile: str) -> str:
        """``whole`` or ``encoder``: the ``network`` parameter, else the profile's."""
        chosen = self.params.network or ("whole" if profile == "pscl-paper" else "encoder")
        if chosen not in NETWORKS:
            raise BenchError(f"pscl: network must be 'whole' or 'encoder', got '{chosen}'")
        return chosen

    def views(self, cfg: PretrainConfig) -> dict[str, ViewConfig]:
        return {"view1": pscl_view(self.params, cfg)}

    def pretrain_config(self, ctx: EncoderContext) -> dict[str, Any]:
        config = super().pretrain_config(ctx)
        network = self.network(ctx.profile)
        config["params"] = {**config["params"], "network": network}
        if network == "whole":
            config["arch"] = ctx.arch
        return config

    def build_model(self, encoder: nn.Module, ctx: EncoderContext, cfg: PretrainConfig) -> SSLModel:
        p = self.params
        if not ctx.shots:
            raise BenchError("pscl needs the labeled shots of the draw (it uses their masks)")
        whole = self.network(ctx.profile) == "whole"
        multiple = 32 if whole else 16
        if cfg.view_size % multiple:
            raise BenchError(
                f"pscl: view_size must be a multiple of {multiple}, got {cfg.view_size}"
            )
        if not 0.0 <= p.patch_weight <= 1.0:
            raise BenchError(f"pscl: patch_weight must lie in [0, 1], got {p.patch_weight}")
        if not 0.0 < p.min_fraction <= 1.0:
            raise BenchError(f"pscl: min_fraction must lie in (0, 1], got {p.min_fraction}")
        if p.samples < 1 or p.sample_ratio < 1 or not 0.0 < p.sub_min <= 1.0:
            raise BenchError("pscl: samples and sample_ratio must be ≥ 1, sub_min in (0, 1]")
        decoder = _decoder(ctx, encoder) if whole else None
        shots = labeled_at_scale(ctx.shots, ctx.scale)
        names = list(ctx.pool_names)
        # a shot that is a pool image keeps that image's id; the others get ids no pool image has
        shot_ids = [names.index(s.stem) if s.stem in names else -1 - i for i, s in enumerate(shots)]
        return PSCLModel(
            encoder,
            shots,
            shot_ids,
            ctx.card.num_classes,
            p,
            self.views(cfg)["view1"],
            cfg.bn_views,
            ctx.device,
            decoder,
            ctx.arch if whole else None,
        )


def _decoder(ctx: EncoderContext, encoder: nn.Module) -> nn.Module:
    """A random U-Net decoder of the run's architecture for ``encoder``."""
    if ctx.arch != "unet":
        raise BenchError(
            f"pscl: whole-network pretraining needs the U-Net decoder (--arch unet), the run "
            f"fine-tunes a {ctx.arch}; use --param network=encoder for encoder-only pretraining"
        )
    return create_segmenter(ctx.arch, ctx.encoder, ctx.card.num_classes).decoder
