"""The one pretraining loop every SSL method shares, with caching, checkpoints and export.

``encoder_for(method, ctx)`` is how a run gets its encoder weights: a baseline's own weights, or an
SSL method's pretrained encoder (cached).

- The unlabeled pool is decoded once into a uint8 tensor on the training device; views are cut and
  augmented there in batches (``bench.ssl.augment``).
- Optimizer and warmup + cosine schedule from the method's engine settings; bf16 autocast and
  channels_last on CUDA; optional gradient clipping; a NaN loss stops the run (``PretrainFailed``).
- A checkpoint is written every epoch; an interrupted pretraining resumes from it.
- Results are cached under ``<cache>/pretrain/<method>-<hash>/`` where the hash covers everything
  that determines the pretraining; concurrent processes wait on a file lock instead of computing
  the same pretraining twice.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from bench.core.compile import should_compile
from bench.core.console import err_console, progress
from bench.core.errors import BenchError
from bench.core.provenance import collect_versions, config_hash
from bench.core.schedules import SCHEDULES, warmup_then
from bench.data.pool import load_pool
from bench.models.encoders import EncoderState, build_encoder, initial_encoder_state, load_strict
from bench.ssl.augment import ImagePool
from bench.ssl.base import SSLMethod
from bench.ssl.config import PretrainConfig
from bench.ssl.method import Baseline, EncoderContext, Method

ENCODER_FILE = "encoder.safetensors"
CARD_FILE = "model_card.json"
CHECKPOINT_FILE = "checkpoint.pt"


class PretrainFailed(BenchError):
    """Pretraining stopped: the loss became NaN/inf (the run is stored as failed)."""


@dataclass
class PretrainResult:
    state: EncoderState
    folder: Path
    cached: bool
    losses: list[float]


@dataclass
class EncoderOutcome:
    """A run's encoder weights (None: random init) and what the run record keeps about them."""

    state: EncoderState | None
    info: dict[str, object]


def encoder_for(method: Method, ctx: EncoderContext) -> EncoderOutcome:
    """The weights fine-tuning starts from: a baseline's own, or the SSL method's pretraining."""
    if isinstance(method, SSLMethod):
        result = pretrain_encoder(method, ctx)
        return EncoderOutcome(
            result.state,
            {
                "pretrain_losses": result.losses,
                "pretrain_cached": result.cached,
                "pretrain_folder": str(result.folder),
            },
        )
    if isinstance(method, Baseline):
        return EncoderOutcome(method.encoder_state(ctx), {})
    raise TypeError(f"method '{method.name}' is neither a Baseline nor an SSLMethod")


def cache_folder(method: SSLMethod, ctx: EncoderContext) -> Path:
    return ctx.cache_dir / "pretrain" / f"{method.name}-{config_hash(method.pretrain_config(ctx))}"


def pretrain_encoder(method: SSLMethod, ctx: EncoderContext) -> PretrainResult:
    """The pretrained encoder for ``ctx``: from the cache, or trained now (and cached)."""
    folder = cache_folder(method, ctx)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if (folder / ENCODER_FILE).is_file():
            card = json.loads((folder / CARD_FILE).read_text())
            return PretrainResult(
                load_file(str(folder / ENCODER_FILE)), folder, True, card.get("losses", [])
            )
        return _train(method, ctx, folder)


def _train(method: SSLMethod, ctx: EncoderContext, folder: Path) -> PretrainResult:
    cfg = method.engine_config(ctx.profile)
    _check(cfg, method.name)
    images = load_pool(ctx.card, ctx.data_root, cfg.pool_limit or None, ctx.split)
    pool = ImagePool(images, ctx.device)
    torch.manual_seed(ctx.seed)
    encoder = build_encoder(ctx.encoder)
    initial = initial_encoder_state(ctx.encoder, ctx.init)
    if initial is not None:
        load_strict(encoder, initial, f"{ctx.encoder} encoder")
    model = method.build_model(encoder, ctx, cfg).to(ctx.device)
    if ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = cfg.steps_per_epoch or max(1, len(pool) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then(cfg.schedule, cfg.warmup_epochs * steps_per_epoch, total_steps)
    )
    generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    losses: list[float] = []
    start_epoch = _resume(folder, model, optimizer, scheduler, generator, losses)
    step_fn = compiled_step(model, ctx.compile, total_steps)
    views = model.view_passes(cfg.batch_size)
    with progress("loss", "speed") as bar:
        task = bar.add_task(
            f"pretrain {method.name}",
            total=total_steps,
            completed=start_epoch * steps_per_epoch,
            loss="",
            speed="",
        )
        for epoch in range(start_epoch, cfg.epochs):
            epoch_loss, started = 0.0, time.perf_counter()
            for step in range(steps_per_epoch):
                index = sample_batch(len(pool), cfg.batch_size, generator)
                loss = step_fn(pool, index, generator)
                value = loss.item()
                if not math.isfinite(value):
                    raise PretrainFailed(
                        f"{method.name} pretraining loss became {value} at epoch {epoch + 1}, "
                        f"step {step + 1}; try a lower lr (--param lr=...) or --param grad_clip=1"
                    )
                done = epoch * steps_per_epoch + step + 1
                apply_step(model, loss, optimizer, scheduler, cfg.grad_clip, done / total_steps)
                epoch_loss += value
                rate = views * (step + 1) / (time.perf_counter() - started)
                bar.update(task, advance=1, loss=f"loss {value:.3f}", speed=f"{rate:.0f} img/s")
            losses.append(epoch_loss / steps_per_epoch)
            _save_checkpoint(folder, epoch + 1, model, optimizer, scheduler, generator, losses)
    state = {k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()}
    save_file(state, str(folder / ENCODER_FILE))
    _write_card(folder, method, ctx, cfg, losses)
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    return PretrainResult(state, folder, False, losses)


def sample_batch(pool_size: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Pool indices of one batch: without replacement when the pool is large enough, so no
    image is its own in-batch negative."""
    device = generator.device
    if pool_size >= batch_size:
        return torch.randperm(pool_size, generator=generator, device=device)[:batch_size]
    return torch.randint(pool_size, (batch_size,), generator=generator, device=device)


def _check(cfg: PretrainConfig, name: str) -> None:
    if cfg.optimizer not in OPTIMIZERS:
        raise BenchError(
            f"{name}: unknown optimizer '{cfg.optimizer}'; choose {', '.join(OPTIMIZERS)}"
        )
    if cfg.schedule not in SCHEDULES:
        raise BenchError(f"{name}: schedule must be 'cosine' or 'constant', got '{cfg.schedule}'")
    if cfg.bn_views not in ("separate", "concat"):
        raise BenchError(f"{name}: bn_views must be 'separate' or 'concat', got '{cfg.bn_views}'")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise BenchError(f"{name}: pretraining needs epochs ≥ 1 and batch_size ≥ 2")


OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(cfg: PretrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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


def compiled_step(model, mode: str, total_steps: int):
    """The loss function of one step, under bf16 autocast on CUDA, optionally torch.compile'd.

    What compiles is ``compile_target`` (the rule is ``bench.core.compile.should_compile`` for the
    pretraining stage). Compiled kernels are cached on disk by the compiler
    (``TORCHINDUCTOR_CACHE_DIR``), so later runs and sweep workers reuse them.
    """
    device = next(model.parameters()).device
    is_cuda = device.type == "cuda"
    target = compile_target(model, mode, total_steps, device)
    loss_fn = model.training_loss
    if target == "whole step":
        loss_fn = torch.compile(model.training_loss)
    elif target == "encoder":
        model.encoder.compile()

    def step(pool, index, generator):
        model.train()
        if is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return loss_fn(pool, index, generator).float()
        return loss_fn(pool, index, generator)

    return step


def _resume(folder: Path, model, optimizer, scheduler, generator, losses: list[float]) -> int:
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return 0
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    generator.set_state(ckpt["generator"])
    losses.extend(ckpt["losses"])
    err_console.print(f"resuming pretraining from epoch {ckpt['epoch']} ({path})")
    return int(ckpt["epoch"])


def _save_checkpoint(
    folder: Path, epoch: int, model, optimizer, scheduler, generator, losses: list[float]
) -> None:
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save(
        {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "losses": losses,
        },
        tmp,
    )
    os.replace(tmp, folder / CHECKPOINT_FILE)


def _write_card(
    folder: Path, method: SSLMethod, ctx: EncoderContext, cfg: PretrainConfig, losses: list[float]
) -> None:
    config = method.pretrain_config(ctx)
    card = {
        "method": method.name,
        "description": method.description,
        "encoder": ctx.encoder,
        "init": ctx.init,
        "data": {"dataset": ctx.card.full_name, "pool": config["pool"]},
        "config": config,
        "engine": dataclasses.asdict(cfg),
        "hash": config_hash(config),
        "losses": losses,
        "versions": collect_versions(),
        "created": datetime.now(timezone.utc).isoformat(),
        "load_with": f"segmentation_models_pytorch.encoders.get_encoder('{ctx.encoder}', "
        "weights=None).load_state_dict(safetensors.torch.load_file(path), strict=True)",
    }
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2))
