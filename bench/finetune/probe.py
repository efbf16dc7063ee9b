"""The frozen-encoder probe: how good is the representation itself, with a light head on top.

Fine-tuning every weight from one labeled image can wash out the differences between encoders; the
probe keeps the encoder frozen and trains only a linear head, so its score measures what the
encoder's features hold.

- **BatchNorm statistics** of the encoder are re-estimated on the shots (the labeled training
  images, at the working scale; a cumulative average) before anything else. A randomly initialised
  encoder's default statistics (mean 0, variance 1) describe no data at all, and any training,
  even on noise, would "improve" them; re-estimating them for every encoder in the same way
  compares the weights, not the bookkeeping. Only training images are read.
- **Features** of the four ResNet stages (strides 4, 8, 16, 32) are computed once per image and
  resolution and cached: shots, validation and test images at the working scale, and test images
  at the resize of each protocol that evaluates at one.
- **Head**: each stage's features are standardised per channel (mean and deviation over the shots'
  features) and mapped to class logits by a 1×1 convolution; the four maps are upsampled
  bilinearly to stride 4 and summed. Upsampling is linear, so this is one linear classifier over
  the concatenated multi-stage features (as linear segmentation probes of SSL encoders are built),
  with no capacity to learn new spatial features. Logits are upsampled to the image for
  prediction.
- **Training**: AdamW on cross-entropy against the class-area fractions of each stride-4 cell (soft
  targets), every shot in every step, ``steps`` steps. **Selection** exactly as fine-tuning: every
  ``eval_every`` steps the validation mIoU (honest protocol) picks the reported step; test scores of
  every protocol are computed at the same points (the oracle is kept beside, labelled).
- **Precision**: the frozen encoder's forward passes (BatchNorm re-estimation and features) run at
  the run's precision (``bench.core.precision``); the features are stored in fp32, and the head,
  its cross-entropy, the logits' argmax and the metrics are fp32.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.console import progress
from bench.core.precision import Precision, resolve_precision
from bench.data.cards import DatasetCard, ProtocolSpec
from bench.data.images import LabeledImage
from bench.finetune.inference import ProtocolResult, class_ids, protocol_results
from bench.finetune.metrics import ConfusionMatrix
from bench.finetune.train import EvalPoint, FinetuneResult
from bench.models.inputs import normalize_uint8
from bench.models.scale import labeled_at_scale, resize_image, resize_mask, resolve_scale

STAGES = 4
"""The four ResNet stages (smp encoder outputs 2..5, strides 4..32)."""
CELL = 4
"""The probe's logits live on the stride-4 grid of its input."""


@dataclass(frozen=True)
class ProbeConfig:
    """The probe's training: a linear head, so a short schedule at a high rate is enough."""

    steps: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-4
    eval_every: int = 50


Features = list[torch.Tensor]
"""One image's stage maps, each ``1×C×h×w``."""


class Standardizer:
    """Per-stage, per-channel mean and deviation of the shots' features, applied once per image."""

    def __init__(self, shot_features: Sequence[Features]) -> None:
        self.stats = []
        for s in range(STAGES):
            flat = torch.cat([f[s].flatten(2) for f in shot_features], dim=2)  # 1×C×N
            mean = flat.mean(dim=2, keepdim=True)[..., None]
            self.stats.append((mean, flat.std(dim=2, keepdim=True)[..., None] + 1e-5))

    def __call__(self, features: Features) -> Features:
        return [(f - mean) / std for f, (mean, std) in zip(features, self.stats, strict=True)]


class LinearProbe(nn.Module):
    """A 1×1 convolution per stage on standardised features, summed on the stride-4 grid."""

    def __init__(self, channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)

    def forward(self, features: Features) -> torch.Tensor:
        """Logits on the stride-4 grid of the image (the first stage's grid)."""
        grid = features[0].shape[-2:]
        total = 0
        for feature, head in zip(features, self.heads, strict=True):
            logits = head(feature)
            if logits.shape[-2:] != grid:
                logits = F.interpolate(logits, size=grid, mode="bilinear", align_corners=False)
            total = total + logits
        assert isinstance(total, torch.Tensor)
        return total


def recalibrated(
    encoder: nn.Module,
    shots: list[LabeledImage],
    device: torch.device,
    precision: Precision | None = None,
) -> nn.Module:
    """A frozen copy of ``encoder`` whose BatchNorm statistics are averaged over the shots (the
    copy in ``precision``'s memory format, its passes at that precision, default fp32; under bf16
    its matrix weights are stored in bf16, ``Precision.frozen``)."""
    precision = precision or resolve_precision("fp32", device)
    frozen = precision.model(copy.deepcopy(encoder).to(device))
    for module in frozen.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over every forward pass
    frozen.train()
    with torch.no_grad(), precision.autocast():
        for shot in shots:
            frozen(precision.input(_input(shot.image, device)))
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return precision.frozen(frozen)


@torch.no_grad()
def stage_features(
    encoder: nn.Module,
    image: np.ndarray,
    device: torch.device,
    precision: Precision | None = None,
) -> Features:
    """The four stage maps of one uint8 image (the frozen encoder in eval mode), in fp32 whatever
    the forward pass's ``precision`` (default fp32)."""
    precision = precision or resolve_precision("fp32", device)
    with precision.autocast():
        maps = encoder(precision.input(_input(image, device)))[2 : 2 + STAGES]
    return [f.float().contiguous() for f in maps]


def _input(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return normalize_uint8(torch.from_numpy(np.ascontiguousarray(image))[None].to(device))


def cell_targets(mask: np.ndarray, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """``1×C×h×w`` class-area fractions of each cell of ``grid`` over ``mask``."""
    onehot = F.one_hot(torch.from_numpy(mask.astype(np.int64)), num_classes).permute(2, 0, 1)
    return F.adaptive_avg_pool2d(onehot[None].float(), grid)


def probe(
    encoder: nn.Module,
    shots: list[LabeledImage],
    val: list[LabeledImage],
    test: list[LabeledImage],
    card: DatasetCard,
    scale_rule: str,
    cfg: ProbeConfig,
    device: torch.device,
    seed: int,
    label: str = "probe",
    precision: Precision | None = None,
) -> FinetuneResult:
    """Train the linear head on the frozen ``encoder``'s features of the shots; evaluate like
    fine-tuning (``FinetuneResult``: the validation-selected step, the oracle beside it).
    ``precision``: the encoder's forward passes (default fp32); the head trains in fp32."""
    torch.manual_seed(seed)
    scale = resolve_scale(card, scale_rule)
    shots = labeled_at_scale(shots, scale)
    frozen = recalibrated(encoder, shots, device, precision)
    raw = [stage_features(frozen, s.image, device, precision) for s in shots]
    standardize = Standardizer(raw)
    shot_features = [standardize(f) for f in raw]
    targets = [
        cell_targets(s.mask, tuple(f[0].shape[-2:]), card.num_classes).to(device)
        for s, f in zip(shots, shot_features, strict=True)
    ]
    head = LinearProbe([f.shape[1] for f in raw[0]], card.num_classes).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    protocols = card.all_protocols()
    val_set = _EvalSet(frozen, standardize, val, scale.resize, protocols[:1], device, precision)
    test_set = _EvalSet(frozen, standardize, test, scale.resize, protocols, device, precision)
    result = FinetuneResult(evals=[])
    with progress("loss") as bar:
        task = bar.add_task(label, total=cfg.steps, loss="")
        for step in range(1, cfg.steps + 1):
            loss = sum(
                F.cross_entropy(head(f), t) for f, t in zip(shot_features, targets, strict=True)
            )
            assert isinstance(loss, torch.Tensor)
            loss = loss / len(shots)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                raise ValueError(f"probe loss became {value} at step {step}")
            result.losses.append(value)
            bar.update(task, advance=1, loss=f"loss {value:.3f}")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                with torch.no_grad():
                    val_res = val_set.score(head, card)["honest"]
                    tests = test_set.score(head, card)
                result.evals.append(EvalPoint(step, val_res.score, val_res.summary, tests))
    return result


class _EvalSet:
    """Cached features of an image set at every resolution its protocols evaluate at."""

    def __init__(
        self,
        encoder: nn.Module,
        standardize: Standardizer,
        images: list[LabeledImage],
        working: tuple[int, int] | None,
        protocols: list[ProtocolSpec],
        device: torch.device,
        precision: Precision | None = None,
    ) -> None:
        self.images, self.protocols = images, protocols
        self.features: dict[tuple[int, int] | None, list[Features]] = {}
        for size in dict.fromkeys(p.resize for p in protocols):
            feed = size or working
            self.features[size] = [
                standardize(stage_features(encoder, _fed(item.image, feed), device, precision))
                for item in images
            ]

    def score(self, head: LinearProbe, card: DatasetCard) -> dict[str, ProtocolResult]:
        matrices: dict[tuple[int, int] | None, np.ndarray] = {}
        for size, features in self.features.items():
            cm = ConfusionMatrix(card.num_classes)
            for item, feats in zip(self.images, features, strict=True):
                mask = item.mask if size is None else resize_mask(item.mask, size)
                logits = F.interpolate(
                    head(feats), size=mask.shape, mode="bilinear", align_corners=False
                )
                cm.update(class_ids(logits)[0].cpu().numpy(), mask)
            matrices[size] = cm.matrix
        return protocol_results(matrices, card, self.protocols)


def _fed(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    return image if size is None else resize_image(image, size)
