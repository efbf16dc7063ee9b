"""Few-shot fine-tuning of an smp segmentation model, and evaluation at native resolution.

Training: a fixed number of optimizer steps on random crops (flips, 90° rotations) of the shots,
AdamW with warmup + cosine (or constant), CE + Dice loss; bf16 autocast and channels_last on CUDA.
Evaluation: every ``eval_every`` steps the model predicts the validation and test images at native
resolution (whole image, or sliding window with ``tile``). The reported model is the one with the
best validation score; the best test score ("oracle") is kept beside it, labelled as such.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from bench.cards import DatasetCard, ProtocolSpec
from bench.console import progress
from bench.data import LabeledImage
from bench.errors import BenchError
from bench.metrics import ConfusionMatrix, Summary, merge_classes, protocol_score, summarize
from bench.profiles import FinetuneConfig

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class TrainingDiverged(BenchError):
    """The fine-tuning loss became NaN or infinite (the run is stored as failed)."""


def build_segmenter(
    cfg: FinetuneConfig, num_classes: int, encoder_state: dict[str, torch.Tensor] | None
) -> nn.Module:
    """An smp model with a random decoder; the encoder loads ``encoder_state`` with strict keys."""
    model = smp.create_model(
        cfg.arch, encoder_name=cfg.encoder, encoder_weights=None, classes=num_classes
    )
    if encoder_state is not None:
        load_encoder_strict(model.encoder, encoder_state, cfg.encoder)
    return model


def load_encoder_strict(encoder: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Load encoder weights; any missing/unexpected key or shape mismatch is an error."""
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        expected, given = set(encoder.state_dict()), set(state)
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        detail = "; ".join(
            part
            for part in (
                f"missing {len(missing)} key(s) e.g. {missing[:3]}" if missing else "",
                f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:3]}" if unexpected else "",
            )
            if part
        ) or str(exc).splitlines()[0]
        raise BenchError(
            f"encoder weights do not fit a {name} encoder ({detail}); refusing to fall back to "
            "random initialisation"
        ) from None


def normalize(gray: torch.Tensor) -> torch.Tensor:
    """uint8 ``B×H×W`` grayscale → float ``B×3×H×W`` with ImageNet statistics."""
    x = gray.float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    return (x - IMAGENET_MEAN.to(x.device)) / IMAGENET_STD.to(x.device)


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


@torch.no_grad()
def predict(model: nn.Module, image: np.ndarray, device: torch.device, tile: int = 0,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """Class ids for one grayscale image at native resolution (or resized to ``size``)."""
    x = normalize(torch.from_numpy(image)[None].to(device))
    if size is not None:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    logits = _sliding_logits(model, x, tile) if tile else _padded_logits(model, x)
    return logits.argmax(1)[0].cpu().numpy().astype(np.uint8)


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x.contiguous(memory_format=torch.channels_last)).float()
    return model(x)


def _padded_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 32, (-w) % 32
    mode = "reflect" if ph < h and pw < w else "replicate"
    return _forward(model, F.pad(x, (0, pw, 0, ph), mode=mode))[..., :h, :w]


def _sliding_logits(model: nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
    """Average logits of overlapping ``tile``-sized windows (stride tile/2) covering the image."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return _padded_logits(model, x)
    stride = tile // 2
    tops = _window_starts(h, tile, stride)
    lefts = _window_starts(w, tile, stride)
    total = count = None
    for top in tops:
        for left in lefts:
            window = x[..., top : top + tile, left : left + tile]
            logits = _padded_logits(model, window)
            if total is None:
                total = x.new_zeros((1, logits.shape[1], h, w))
                count = x.new_zeros((1, 1, h, w))
            total[..., top : top + tile, left : left + tile] += logits
            count[..., top : top + tile, left : left + tile] += 1
    return total / count


def _window_starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


@dataclass
class ProtocolResult:
    score: float
    summary: Summary


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


def evaluate(model: nn.Module, images: list[LabeledImage], card: DatasetCard,
             protocols: list[ProtocolSpec], device: torch.device, tile: int,
             keep: dict[str, np.ndarray] | None = None) -> dict[str, ProtocolResult]:
    """Score every protocol from one confusion matrix per evaluation resolution.

    Each matrix is accumulated over the whole image set (not averaged per image); protocols at the
    same resolution share the same predictions. Native-resolution predictions of images whose stem
    is a key of ``keep`` are stored there.
    """
    matrices: dict[tuple[int, int] | None, np.ndarray] = {}
    for size in dict.fromkeys(p.resize for p in protocols):
        cm = ConfusionMatrix(card.num_classes)
        for item in images:
            if size is None:
                pred = predict(model, item.image, device, tile)
                if keep is not None and item.stem in keep:
                    keep[item.stem] = pred
                cm.update(pred, item.mask)
            else:
                cm.update(predict(model, item.image, device, size=size), _resize_mask(item.mask, size))
        matrices[size] = cm.matrix
    results = {}
    for spec in protocols:
        cm = matrices[spec.resize]
        merged = merge_classes(cm, spec.merge) if spec.merge else cm
        results[spec.name] = ProtocolResult(protocol_score(cm, spec, card.background),
                                            summarize(merged, card.background))
    return results


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy().astype(np.uint8)


def make_loss(name: str, num_classes: int) -> nn.Module:
    dice = smp.losses.DiceLoss(mode="multiclass", from_logits=True)
    if name == "dice":
        return dice
    if name == "ce+dice":
        ce = nn.CrossEntropyLoss()
        return _SumLoss(ce, dice)
    raise BenchError(f"unknown fine-tuning loss '{name}'; choose 'ce+dice' or 'dice'")


class _SumLoss(nn.Module):
    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def lr_lambda(cfg: FinetuneConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / span))

    return factor


COMPILE_AUTO_MIN_STEPS = 500
"""``--compile auto`` compiles fine-tuning on CUDA from this many steps on (the warm-up then pays)."""


def use_compile(mode: str, steps: int, device: torch.device) -> bool:
    """Whether ``--compile mode`` compiles a run of ``steps`` fine-tuning steps on ``device``."""
    return mode == "on" or (mode == "auto" and device.type == "cuda" and steps >= COMPILE_AUTO_MIN_STEPS)


class TrainStep:
    """One fine-tuning optimizer step: a batch of crops, forward (bf16 autocast + channels_last on
    CUDA), loss, backward, AdamW (fused on CUDA), schedule.

    Compiled (``use_compile``), the forward and loss go through ``torch.compile``; on CUDA in mode
    ``reduce-overhead``, i.e. CUDA graphs: a few-shot batch is launch-bound, and its shapes are
    fixed by the crop and batch size. Compiled kernels are cached on disk
    (``TORCHINDUCTOR_CACHE_DIR``), so later runs of a sweep worker reuse them.
    """

    def __init__(self, model: nn.Module, sampler: ShotSampler, cfg: FinetuneConfig, num_classes: int,
                 device: torch.device, compile: str = "off") -> None:
        self.model, self.sampler, self.device = model, sampler, device
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           fused=device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        loss_fn = make_loss(cfg.loss, num_classes)

        def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(_forward(model, x), y)

        self.compiled = use_compile(compile, cfg.steps, device)
        self.graphs = self.compiled and device.type == "cuda"
        self.loss_of = (torch.compile(loss_of, mode="reduce-overhead" if self.graphs else None)
                        if self.compiled else loss_of)

    def __call__(self, batch_size: int, step: int) -> float:
        """Train on one batch; the loss. TrainingDiverged when it is not finite."""
        self.model.train()
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        x, y = self.sampler.batch(batch_size)
        x, y = normalize(x.to(self.device)), y.to(self.device)
        loss = self.loss_of(x, y)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"fine-tuning loss became {value} at step {step}; try a lower --lr")
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
