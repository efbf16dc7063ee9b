"""Few-shot fine-tuning of an smp segmentation model.

A fixed number of optimizer steps on random crops (flips, 90° rotations) of the shots, AdamW with
warmup + cosine (or constant), CE + Dice loss; bf16 autocast and channels_last on CUDA. Every
``eval_every`` steps the model predicts the validation and test images
(``bench.finetune.inference``).
The reported model is the one with the best validation score; the best test score ("oracle") is
kept beside it, labelled as such.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bench.core.compile import should_compile
from bench.core.console import progress
from bench.core.errors import BenchError
from bench.core.schedules import warmup_then
from bench.data.cards import DatasetCard
from bench.data.images import LabeledImage
from bench.finetune.config import FinetuneConfig
from bench.finetune.inference import ProtocolResult, evaluate, forward_logits
from bench.finetune.losses import make_loss
from bench.finetune.metrics import Summary
from bench.models.inputs import normalize_uint8


class TrainingDiverged(BenchError):
    """The fine-tuning loss became NaN or infinite (the run is stored as failed)."""


class ShotSampler:
    """Random crops of the labeled shots with flips and 90° rotations."""

    def __init__(self, shots: list[LabeledImage], crop: int, rng: np.random.Generator) -> None:
        if not shots:
            raise BenchError("fine-tuning needs at least one labeled image")
        self.images = [_pad_to(s.image, crop) for s in shots]
        self.masks = [_pad_to(s.mask, crop) for s in shots]
        self.crop, self.rng = crop, rng

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(size):
            i = int(self.rng.integers(len(self.images)))
            img, mask = self.images[i], self.masks[i]
            top = int(self.rng.integers(img.shape[0] - self.crop + 1))
            left = int(self.rng.integers(img.shape[1] - self.crop + 1))
            x = img[top : top + self.crop, left : left + self.crop]
            y = mask[top : top + self.crop, left : left + self.crop]
            k = int(self.rng.integers(4))
            flip = bool(self.rng.integers(2))
            x, y = np.rot90(x, k), np.rot90(y, k)
            if flip:
                x, y = x[:, ::-1], y[:, ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()


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
    """One fine-tuning optimizer step: a batch of crops, forward (bf16 autocast + channels_last on
    CUDA), loss, backward, AdamW (fused on CUDA), schedule.

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
    ) -> None:
        self.model, self.sampler, self.device = model, sampler, device
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            fused=device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_then(cfg.schedule, cfg.warmup_steps, cfg.steps)
        )
        loss_fn = make_loss(cfg.loss, num_classes)

        def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(forward_logits(model, x), y)

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
) -> FinetuneResult:
    """Train for ``cfg.steps`` steps, evaluating val (selection) and test (reporting) periodically.

    ``on_eval(step, val_score)`` is called after each evaluation (e.g. to report to a pruner,
    which may stop the run by raising). ``compile``: ``--compile`` (see ``TrainStep``).
    """
    torch.manual_seed(seed)
    sampler = ShotSampler(shots, cfg.crop, np.random.default_rng(seed))
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    train_step = TrainStep(model, sampler, cfg, card.num_classes, device, compile)
    protocols = card.all_protocols()
    result = FinetuneResult(evals=[], compiled=train_step.compiled)
    with progress("loss") as bar:
        task = bar.add_task(label, total=cfg.steps, loss="")
        for step in range(1, cfg.steps + 1):
            loss = train_step(cfg.batch_size, step)
            result.losses.append(loss)
            bar.update(task, advance=1, loss=f"loss {loss:.3f}")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                model.eval()
                val_res = evaluate(model, val, card, protocols[:1], device, cfg.tile)["honest"]
                kept = {item.stem: None for item in test[:keep_predictions]}
                tests = evaluate(model, test, card, protocols, device, cfg.tile, kept)
                result.evals.append(EvalPoint(step, val_res.score, val_res.summary, tests, kept))
                if on_eval is not None:
                    on_eval(step, val_res.score)
    return result
