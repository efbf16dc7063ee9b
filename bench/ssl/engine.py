"""The one pretraining loop every SSL method shares, with caching, checkpoints and export.

``encoder_for(method, ctx)`` is how a run gets its weights: a baseline's own weights, or an SSL
method's pretrained encoder (and decoder, for methods that pretrain it), cached.

- The unlabeled pool is decoded once at the run's working scale into a uint8 tensor on the
  training device; views are cut and augmented there in batches (``bench.ssl.augment``).
- The budget is ``steps`` optimizer steps of ``batch_size`` pool images, whatever the pool size. A
  batch holds distinct images when the pool allows; a smaller pool is repeated evenly, and the
  contrastive losses leave same-image pairs out of the denominator (``bench.ssl.losses``).
- Optimizer and warmup + cosine schedule from the method's engine settings; the run's precision
  (``bench.core.precision``: bf16 autocast + channels_last, or fp32) around the step's forward
  passes, the loss returned in fp32 (the contrastive similarities are fp32 matmuls,
  ``bench.ssl.losses``); optional gradient clipping; a NaN loss stops the run (``PretrainFailed``).
- A resume checkpoint is written at most every ``CHECKPOINT_SECONDS`` (read back with
  ``weights_only=True``; an unreadable one is moved aside and the pretraining starts over).
- Results are cached (``bench.ssl.cache``) under a hash of the pretraining config and the compute
  it runs on (``compute_fingerprint``: device type, resolved precision and, on CPU, the thread
  count); entries are
  published atomically and verified before use; concurrent processes wait on a file lock instead
  of computing one pretraining twice.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench.core.compile import should_compile
from bench.core.console import progress
from bench.core.devices import fused_optimizer
from bench.core.errors import BenchError
from bench.core.precision import Precision, resolve_precision
from bench.core.provenance import collect_versions, config_hash
from bench.core.schedules import SCHEDULES, warmup_then
from bench.data.pool import load_pool, pool_members
from bench.models.encoders import build_encoder, initial_encoder_state, load_strict
from bench.models.scale import to_scale
from bench.models.segmenter import PretrainedWeights
from bench.ssl.augment import ImagePool
from bench.ssl.base import SSLMethod, SSLModel
from bench.ssl.cache import BadEntry, CacheEntry, Expected, note
from bench.ssl.checkpoint import CHECKPOINT_FILE, BadCheckpoint, load_checkpoint, save_checkpoint
from bench.ssl.config import PretrainConfig
from bench.ssl.method import Baseline, EncoderContext, Method

CHECKPOINT_SECONDS = 60.0
"""Wall time between resume checkpoints (resuming is exact, so this never changes a result)."""
LOSS_POINTS = 100
"""The card and the run record keep the mean loss of at most this many equal runs of steps."""


class PretrainFailed(BenchError):
    """Pretraining stopped: the loss became NaN/inf (the run is stored as failed)."""


@dataclass
class PretrainResult:
    weights: PretrainedWeights
    folder: Path
    cached: bool
    losses: list[float]
    """Mean loss of each run of ``loss_every`` steps."""
    loss_every: int


@dataclass
class EncoderOutcome:
    """A run's starting weights (None: random init) and what the run record keeps about them."""

    weights: PretrainedWeights | None
    info: dict[str, object]


def encoder_for(method: Method, ctx: EncoderContext) -> EncoderOutcome:
    """The weights fine-tuning starts from: a baseline's own, or the SSL method's pretraining."""
    if isinstance(method, SSLMethod):
        result = pretrain_encoder(method, ctx)
        return EncoderOutcome(
            result.weights,
            {
                "pretrain_losses": result.losses,
                "pretrain_loss_every": result.loss_every,
                "pretrain_cached": result.cached,
                "pretrain_folder": str(result.folder),
                "pretrain_compute": compute_fingerprint(ctx.device, ctx.precision),
                "pretrained_parts": list(result.weights.parts),
            },
        )
    if isinstance(method, Baseline):
        state = method.encoder_state(ctx)
        return EncoderOutcome(PretrainedWeights(state) if state is not None else None, {})
    raise TypeError(f"method '{method.name}' is neither a Baseline nor an SSLMethod")


def compute_fingerprint(device: torch.device, precision: str = "fp32") -> dict[str, Any]:
    """What besides the config changes a pretraining's result: the device type, the resolved
    precision (``fp32``/``bf16``; ``auto`` is resolved first, so a bf16 machine and an fp32 one
    never share an entry), and on CPU the number of threads. CPU kernels reduce in a
    thread-dependent order; the last-bit differences grow during training (measured: 20 MatSSL
    steps, ResNet-18, 16 × 96² views: final loss 3.367 with 1 thread, 3.243 with 2; two runs with
    1 thread are bit-identical)."""
    resolved = resolve_precision(precision, device).name
    if device.type == "cpu":
        return {"device": "cpu", "precision": resolved, "threads": torch.get_num_threads()}
    return {"device": device.type, "precision": resolved}


def cache_entry(method: SSLMethod, ctx: EncoderContext) -> CacheEntry:
    config = method.pretrain_config(ctx)
    compute = compute_fingerprint(ctx.device, ctx.precision)
    digest = config_hash({"config": config, "compute": compute})
    expected = Expected(digest, config, compute, ctx.encoder)
    return CacheEntry(ctx.cache_dir / "pretrain", f"{method.name}-{digest}", expected)


def cache_folder(method: SSLMethod, ctx: EncoderContext) -> Path:
    return cache_entry(method, ctx).folder


def pretrain_encoder(method: SSLMethod, ctx: EncoderContext) -> PretrainResult:
    """The pretrained weights for ``ctx``: from the cache (verified), or trained now and cached.

    A complete valid entry is read without the lock; otherwise the lock is taken, a bad entry moved
    aside (one-line note) and the pretraining run (resumed from its checkpoint if one is there)."""
    entry = cache_entry(method, ctx)
    bad = None
    try:
        weights = entry.load()
    except BadEntry as exc:
        weights, bad = None, str(exc)  # moved aside below, under the lock
    if weights is not None:
        return _cached(entry, weights)
    with entry.locked(bad):
        try:
            weights = entry.load()
        except BadEntry as exc:
            entry.move_aside(str(exc))
        if weights is not None:
            return _cached(entry, weights)
        return _train(method, ctx, entry)


def _cached(entry: CacheEntry, weights: PretrainedWeights) -> PretrainResult:
    card = entry.card()
    return PretrainResult(
        weights, entry.folder, True, card.get("losses", []), card.get("loss_every", 1)
    )


@dataclass
class _Training:
    """Everything one pretraining updates (rebuilt from the seed when a checkpoint is refused)."""

    model: SSLModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator


def _setup(method: SSLMethod, ctx: EncoderContext, cfg: PretrainConfig) -> _Training:
    torch.manual_seed(ctx.seed)
    encoder = build_encoder(ctx.encoder)
    initial = initial_encoder_state(ctx.encoder, ctx.init)
    if initial is not None:
        load_strict(encoder, initial, f"{ctx.encoder} encoder")
    model = resolve_precision(ctx.precision, ctx.device).model(
        method.build_model(encoder, ctx, cfg).to(ctx.device)
    )
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then(cfg.schedule, cfg.warmup_steps, cfg.steps)
    )
    generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    return _Training(model, optimizer, scheduler, generator)


def load_scaled_pool(ctx: EncoderContext, cfg: PretrainConfig) -> tuple[ImagePool, EncoderContext]:
    """The pool at the working scale on the training device, and ``ctx`` with its pool names."""
    limit = cfg.pool_limit or None
    images = [
        to_scale(im, ctx.scale)
        for im in load_pool(ctx.card, ctx.data_root, limit, ctx.split, ctx.pool)
    ]
    names = pool_names(ctx, limit, len(images))
    return ImagePool(images, ctx.device), dataclasses.replace(ctx, pool_names=names)


def pool_names(ctx: EncoderContext, limit: int | None, count: int) -> tuple[str, ...]:
    """What each pool image is: a stem of the split when the pool is the split's training images
    (so a shot that is also in the pool is recognised), else ``unlabeled/<file or index>``."""
    members = pool_members(ctx.card, ctx.data_root, ctx.split, ctx.pool)[:limit]
    if members:
        return tuple(name for name, _ in members)
    return tuple(f"unlabeled/{i}" for i in range(count))


def _train(method: SSLMethod, ctx: EncoderContext, entry: CacheEntry) -> PretrainResult:
    cfg = method.engine_config(ctx.profile)
    _check(cfg, method.name)
    pool, ctx = load_scaled_pool(ctx, cfg)
    run = _setup(method, ctx, cfg)
    work = entry.work_folder()
    losses: list[float] = []
    start = _resume(work, run, losses)
    if start < 0:  # refused checkpoint: start over from a fresh model
        run, start = _setup(method, ctx, cfg), 0
    step_fn = compiled_step(
        run.model, ctx.compile, cfg.steps, resolve_precision(ctx.precision, ctx.device)
    )
    views = run.model.view_passes(cfg.batch_size)
    saved = time.perf_counter()
    with progress("loss", "speed") as bar:
        task = bar.add_task(
            f"pretrain {method.name}", total=cfg.steps, completed=start, loss="", speed=""
        )
        started = time.perf_counter()
        for step in range(start, cfg.steps):
            index = sample_batch(len(pool), cfg.batch_size, run.generator)
            loss = step_fn(pool, index, run.generator)
            value = loss.item()
            if not math.isfinite(value):
                raise PretrainFailed(
                    f"{method.name} pretraining loss became {value} at step {step + 1}; try a "
                    "lower lr (--param lr=...) or --param grad_clip=1"
                )
            apply_step(
                run.model, loss, run.optimizer, run.scheduler, cfg.grad_clip, (step + 1) / cfg.steps
            )
            losses.append(value)
            rate = views * (step + 1 - start) / (time.perf_counter() - started)
            bar.update(task, advance=1, loss=f"loss {value:.3f}", speed=f"{rate:.0f} img/s")
            if step + 1 < cfg.steps and time.perf_counter() - saved >= CHECKPOINT_SECONDS:
                _save(work, step + 1, run, losses)
                saved = time.perf_counter()
    weights = run.model.exported()
    every, means = loss_windows(losses)
    entry.publish(weights, _card(method, ctx, cfg, entry, weights, means, every, views))
    return PretrainResult(weights, entry.folder, False, means, every)


def loss_windows(losses: list[float]) -> tuple[int, list[float]]:
    """``(every, means)``: the mean loss of each run of ``every`` steps, at most ``LOSS_POINTS``."""
    every = max(1, math.ceil(len(losses) / LOSS_POINTS))
    return every, [
        sum(losses[i : i + every]) / len(losses[i : i + every])
        for i in range(0, len(losses), every)
    ]


def sample_batch(pool_size: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Pool indices of one batch: distinct images when the pool has enough; a smaller pool is
    repeated as evenly as possible (each image ⌊B/N⌋ or ⌈B/N⌉ times), and the losses treat the
    copies of an image as neither positives nor negatives of each other."""
    device = generator.device
    rounds = -(-batch_size // pool_size)
    order = [torch.randperm(pool_size, generator=generator, device=device) for _ in range(rounds)]
    return torch.cat(order)[:batch_size]


def _check(cfg: PretrainConfig, name: str) -> None:
    if cfg.optimizer not in OPTIMIZERS:
        raise BenchError(
            f"{name}: unknown optimizer '{cfg.optimizer}'; choose {', '.join(OPTIMIZERS)}"
        )
    if cfg.schedule not in SCHEDULES:
        raise BenchError(f"{name}: schedule must be 'cosine' or 'constant', got '{cfg.schedule}'")
    if cfg.bn_views not in ("separate", "concat"):
        raise BenchError(f"{name}: bn_views must be 'separate' or 'concat', got '{cfg.bn_views}'")
    if cfg.steps < 1 or cfg.batch_size < 2 or cfg.warmup_steps < 0:
        raise BenchError(f"{name}: pretraining needs steps ≥ 1, batch_size ≥ 2, warmup_steps ≥ 0")


OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(cfg: PretrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The method's optimizer over the trainable parameters, fused where the device has it."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = fused_optimizer(params[0].device)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def apply_step(
    model, loss: torch.Tensor, optimizer, scheduler, grad_clip: float, progress: float
) -> None:
    """Backward, gradient clipping (``grad_clip`` > 0), optimizer and schedule step, then the
    model's ``after_step(progress)`` (EMA updates)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    model.after_step(progress)


def compile_target(model, mode: str, total_steps: int, device: torch.device) -> str | None:
    """What ``compiled_step`` compiles on ``device``: None, ``"whole step"``, or ``"encoder"``
    (methods whose step has data-dependent shapes, ``compile_whole_step = False``)."""
    if not should_compile(mode, "pretrain", total_steps, device):
        return None
    return "whole step" if model.compile_whole_step else "encoder"


def compiled_step(model, mode: str, total_steps: int, precision: Precision | None = None):
    """The loss function of one step under ``precision`` (default fp32; bf16: autocast, the model
    already in channels_last), the loss cast to fp32; optionally torch.compile'd.

    What compiles is ``compile_target`` (the rule is ``bench.core.compile.should_compile`` for the
    pretraining stage). Compiled kernels are cached on disk by the compiler
    (``TORCHINDUCTOR_CACHE_DIR``), so later runs and sweep workers reuse them.
    """
    device = next(model.parameters()).device
    precision = precision or resolve_precision("fp32", device)
    target = compile_target(model, mode, total_steps, device)
    loss_fn = model.training_loss
    if target == "whole step":
        loss_fn = torch.compile(model.training_loss)
    elif target == "encoder":
        model.encoder.compile()

    def step(pool, index, generator):
        model.train()
        with precision.autocast():
            loss = loss_fn(pool, index, generator)
        return loss.float()

    return step


def _resume(work: Path, run: _Training, losses: list[float]) -> int:
    """The step to continue from: the checkpoint's, 0 without one, −1 when it was refused (moved
    aside with a note; ``run`` may be half-restored and must be rebuilt)."""
    path = work / CHECKPOINT_FILE
    if not path.is_file():
        return 0
    try:
        ckpt = load_checkpoint(path)
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.generator.set_state(ckpt["generator"])
        step = int(ckpt["step"])
        restored = [float(v) for v in ckpt["losses"]]
    except (BadCheckpoint, RuntimeError, ValueError, TypeError, KeyError) as exc:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = path.with_name(f"{CHECKPOINT_FILE}.bad-{stamp}")
        os.replace(path, aside)
        note(f"note: resume checkpoint {path} {exc}; moved to {aside}, pretraining starts over")
        return -1
    losses.extend(restored)
    note(f"resuming pretraining from step {step} ({path})")
    return step


def _save(work: Path, step: int, run: _Training, losses: list[float]) -> None:
    save_checkpoint(
        work,
        {
            "step": step,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "generator": run.generator.get_state(),
            "losses": losses,
        },
    )


def _card(
    method: SSLMethod,
    ctx: EncoderContext,
    cfg: PretrainConfig,
    entry: CacheEntry,
    weights: PretrainedWeights,
    losses: list[float],
    loss_every: int,
    view_passes: int,
) -> dict[str, Any]:
    config = entry.expected.config
    card: dict[str, Any] = {
        "method": method.name,
        "description": method.description,
        "encoder": ctx.encoder,
        "init": ctx.init,
        "parts": list(weights.parts),
        "data": {
            "dataset": ctx.card.full_name,
            "pool": config["pool"],
            "images": len(ctx.pool_names),
        },
        "scale": ctx.scale.describe(),
        "config": config,
        "compute": entry.expected.compute,
        "engine": dataclasses.asdict(cfg),
        "hash": entry.expected.hash,
        "steps": cfg.steps,
        "views_seen": view_passes * cfg.steps,
        "losses": losses,
        "loss_every": loss_every,
        "versions": collect_versions(),
        "created": datetime.now(timezone.utc).isoformat(),
        "load_with": f"segmentation_models_pytorch.encoders.get_encoder('{ctx.encoder}', "
        "weights=None).load_state_dict(safetensors.torch.load_file(path), strict=True)",
    }
    if weights.decoder is not None:
        card["arch"] = weights.arch
        card["load_decoder_with"] = (
            f"segmentation_models_pytorch.create_model('{weights.arch}', encoder_name="
            f"'{ctx.encoder}', encoder_weights=None, classes=N).decoder.load_state_dict("
            "safetensors.torch.load_file(decoder_path), strict=True)"
        )
    return card
