"""Few-shot fine-tuning of an smp segmentation model.

A fixed number of optimizer steps on crops (or whole images) of the shots at the working scale,
with optional flips, 90° rotations and brightness/contrast jitter; AdamW with warmup + cosine (or
constant), the pretrained parts at their own learning rate; the configured loss. The forward pass
runs at the run's precision (``bench.core.precision``: bf16 autocast + channels_last, or fp32);
the logits are cast to fp32 before the loss, so losses, their softmax and the backward of the
loss are fp32. Every ``eval_every`` steps the model predicts the validation and test images
(``bench.finetune.inference``).
The reported model is the one with the best validation score; the best test score ("oracle") is
kept beside it, labelled as such.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bench.core.compile import should_compile
from bench.core.console import progress
from bench.core.devices import fused_optimizer
from bench.core.errors import BenchError
from bench.core.precision import Precision, resolve_precision
from bench.core.schedules import warmup_then
from bench.data.cards import DatasetCard
from bench.data.images import LabeledImage
from bench.finetune.config import FinetuneConfig
from bench.finetune.inference import ProtocolResult, evaluate, forward_logits
from bench.finetune.losses import make_loss, rare_class_weights
from bench.finetune.metrics import Summary
from bench.models.inputs import normalize_uint8
from bench.models.scale import labeled_at_scale, resolve_scale


class TrainingDiverged(BenchError):
    """The fine-tuning loss became NaN or infinite (the run is stored as failed)."""


class ShotSampler:
    """Training batches from the labeled shots: random ``crop``² crops (0: the whole images), with
    flips and 90° rotations when ``augment``, brightness/contrast jitter of strength ``jitter``
    with p = 0.8; images drawn at random (``batching = "random"``) or walking through a shuffled
    order of the shots (``"epoch"``)."""

    def __init__(
        self,
        shots: list[LabeledImage],
        crop: int,
        rng: np.random.Generator,
        augment: bool = True,
        jitter: float = 0.0,
        batching: str = "random",
    ) -> None:
        if not shots:
            raise BenchError("fine-tuning needs at least one labeled image")
        if crop == 0 and len({s.image.shape for s in shots}) > 1:
            raise BenchError(
                "fine-tuning on whole images (crop 0) needs shots of one size; work at a "
                "resize scale (--scale HxW) or train on crops (--crop N)"
            )
        self.images = [_pad_to(s.image, crop) for s in shots]
        self.masks = [_pad_to(s.mask, crop) for s in shots]
        self.crop, self.rng = crop, rng
        self.augment, self.jitter, self.batching = augment, jitter, batching
        self.order: list[int] = []

    def _next(self) -> int:
        if self.batching == "random":
            return int(self.rng.integers(len(self.images)))
        if not self.order:
            self.order = self.rng.permutation(len(self.images)).tolist()
        return self.order.pop(0)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batching == "epoch":
            size = min(size, len(self.order) or len(self.images))
        xs, ys = [], []
        for _ in range(size):
            i = self._next()
            img, mask = self.images[i], self.masks[i]
            if self.crop:
                top = int(self.rng.integers(img.shape[0] - self.crop + 1))
                left = int(self.rng.integers(img.shape[1] - self.crop + 1))
                img = img[top : top + self.crop, left : left + self.crop]
                mask = mask[top : top + self.crop, left : left + self.crop]
            if self.augment:
                k = int(self.rng.integers(4))
                flip = bool(self.rng.integers(2))
                img, mask = np.rot90(img, k), np.rot90(mask, k)
                if flip:
                    img, mask = img[:, ::-1], mask[:, ::-1]
            if self.jitter > 0:
                img = jitter_image(img, self.jitter, self.rng)
            xs.append(np.ascontiguousarray(img))
            ys.append(np.ascontiguousarray(mask))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()


def jitter_image(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """torchvision's brightness and contrast jitter on a uint8 image, with p = 0.8: factors
    ~ U(max(0, 1 − s), 1 + s) in a random order, each clamped to 0..255."""
    if rng.random() >= 0.8:
        return image
    low = max(0.0, 1 - strength)
    b, c = rng.uniform(low, 1 + strength, size=2)
    x = image.astype(np.float32) / 255
    ops = [lambda v: np.clip(v * b, 0, 1), lambda v: np.clip(c * v + (1 - c) * v.mean(), 0, 1)]
    for op in ops if rng.random() < 0.5 else ops[::-1]:
        x = op(x)
    return np.round(x * 255).astype(np.uint8)


def _pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    pad_h, pad_w = max(0, size - arr.shape[0]), max(0, size - arr.shape[1])
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, pad_h), (0, pad_w)), mode="reflect")
    return arr


@dataclass
class EvalPoint:
    step: int
    val_score: float
    val: Summary
    test: dict[str, ProtocolResult]
    predictions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Native-resolution test predictions of the first few test images (for figures)."""


@dataclass
class FinetuneResult:
    evals: list[EvalPoint]
    losses: list[float] = field(default_factory=list)
    compiled: bool = False
    """Whether the training step ran through ``torch.compile``."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of the training steps (``train``) and of the evaluations (``eval``)."""

    @property
    def selected(self) -> EvalPoint:
        """The evaluation with the best validation mIoU (earliest on ties)."""
        return max(self.evals, key=lambda e: (_finite(e.val_score), -e.step))

    def oracle(self, protocol: str) -> EvalPoint:
        """The evaluation with the best *test* score: optimistic, reported only for comparison."""
        return max(self.evals, key=lambda e: (_finite(e.test[protocol].score), -e.step))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


class TrainStep:
    """One fine-tuning optimizer step: a batch of crops, forward at ``precision`` (default fp32;
    the model already in its memory format), fp32 loss, backward, AdamW (fused, as
    ``bench.core.devices.fused_optimizer`` says), schedule. The submodules named in
    ``pretrained`` (``encoder``, ``decoder``) train at ``cfg.pretrained_lr`` when it is set.

    Compiled (``bench.core.compile``), forward and loss run through ``torch.compile``; on CUDA, mode
    ``reduce-overhead``, i.e. CUDA graphs: a few-shot batch is launch-bound, and its shapes are
    fixed by the crop and batch size. Compiled kernels are cached on disk
    (``TORCHINDUCTOR_CACHE_DIR``), so later runs of a sweep worker reuse them.
    """

    def __init__(
        self,
        model: nn.Module,
        sampler: ShotSampler,
        cfg: FinetuneConfig,
        num_classes: int,
        device: torch.device,
        compile: str = "off",
        pretrained: tuple[str, ...] = (),
        background: int | None = None,
        class_weights: torch.Tensor | None = None,
        precision: Precision | None = None,
    ) -> None:
        self.model, self.sampler, self.device = model, sampler, device
        self.precision = precision or resolve_precision("fp32", device)
        self.optimizer = torch.optim.AdamW(
            param_groups(model, pretrained, cfg),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            fused=fused_optimizer(device),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_then(cfg.schedule, cfg.warmup_steps, cfg.steps)
        )
        loss_fn = make_loss(cfg.loss, num_classes, background, class_weights)

        def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(forward_logits(model, x, self.precision), y)

        self.compiled = should_compile(compile, "finetune", cfg.steps, device)
        self.graphs = self.compiled and device.type == "cuda"
        self.loss_of = (
            torch.compile(loss_of, mode="reduce-overhead" if self.graphs else None)
            if self.compiled
            else loss_of
        )

    def __call__(self, batch_size: int, step: int) -> float:
        """Train on one batch; the loss. TrainingDiverged when it is not finite."""
        self.model.train()
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        x, y = self.sampler.batch(batch_size)
        x, y = normalize_uint8(x.to(self.device)), y.to(self.device)
        loss = self.loss_of(x, y)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"fine-tuning loss became {value} at step {step}; try a lower --lr"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return value


def param_groups(
    model: nn.Module, pretrained: tuple[str, ...], cfg: FinetuneConfig
) -> list[dict[str, object]]:
    """One group at ``cfg.lr``, or with ``cfg.pretrained_lr`` set, the ``pretrained`` submodules'
    parameters at that rate and the rest at ``cfg.lr`` (AdamW with weight decay 0 is Adam)."""
    if not cfg.pretrained_lr or not pretrained:
        return [{"params": list(model.parameters())}]
    loaded = [p for name in pretrained for p in getattr(model, name).parameters()]
    ids = {id(p) for p in loaded}
    fresh = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": loaded, "lr": cfg.pretrained_lr}, {"params": fresh}]


def finetune(
    model: nn.Module,
    shots: list[LabeledImage],
    val: list[LabeledImage],
    test: list[LabeledImage],
    card: DatasetCard,
    cfg: FinetuneConfig,
    device: torch.device,
    seed: int,
    label: str = "fine-tune",
    keep_predictions: int = 3,
    on_eval: Callable[[int, float], None] | None = None,
    compile: str = "off",
    pretrained: tuple[str, ...] = (),
    precision: Precision | None = None,
) -> FinetuneResult:
    """Train for ``cfg.steps`` steps at the working scale (``cfg.scale``), evaluating val
    (selection) and test (reporting) periodically.

    ``on_eval(step, val_score)`` is called after each evaluation (e.g. to report to a pruner,
    which may stop the run by raising). ``compile``: ``--compile`` (see ``TrainStep``).
    ``pretrained``: the submodules that start from pretrained weights (``cfg.pretrained_lr``).
    ``precision``: the forward passes' precision, training and evaluation (default fp32).
    """
    precision = precision or resolve_precision("fp32", device)
    torch.manual_seed(seed)
    scale = resolve_scale(card, cfg.scale)
    shots = labeled_at_scale(shots, scale)
    sampler = ShotSampler(
        shots, cfg.crop, np.random.default_rng(seed), cfg.augment, cfg.jitter, cfg.batching
    )
    model = precision.model(model.to(device))
    weights = rare_class_weights(
        [s.mask for s in shots], card.num_classes, cfg.rare_share, cfg.rare_weight
    )
    train_step = TrainStep(
        model,
        sampler,
        cfg,
        card.num_classes,
        device,
        compile,
        pretrained,
        card.background,
        weights,
        precision,
    )
    protocols = card.all_protocols()
    result = FinetuneResult(evals=[], compiled=train_step.compiled)
    seconds = result.seconds
    seconds.update(train=0.0, eval=0.0)
    with progress("loss") as bar:
        task = bar.add_task(label, total=cfg.steps, loss="")
        for step in range(1, cfg.steps + 1):
            started = time.perf_counter()
            loss = train_step(cfg.batch_size, step)
            seconds["train"] += time.perf_counter() - started
            result.losses.append(loss)
            bar.update(task, advance=1, loss=f"loss {loss:.3f}")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                started = time.perf_counter()
                model.eval()
                val_res = evaluate(
                    model, val, card, protocols[:1], device, cfg.tile, None, scale.resize, precision
                )["honest"]
                kept = {item.stem: None for item in test[:keep_predictions]}
                tests = evaluate(
                    model, test, card, protocols, device, cfg.tile, kept, scale.resize, precision
                )
                result.evals.append(EvalPoint(step, val_res.score, val_res.summary, tests, kept))
                seconds["eval"] += time.perf_counter() - started
                if on_eval is not None:
                    on_eval(step, val_res.score)
    return result
