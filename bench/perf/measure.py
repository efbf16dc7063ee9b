"""The single-process measurements of ``bench perf``: the device's ceiling, the SSL engine per
method, few-shot fine-tuning steps/s and evaluation images/s, each at a given precision
(``bench.core.precision``: bf16 autocast + channels_last, or fp32).

- ``measure_ceiling``: a synthetic torchvision ResNet-50 classifier (random weights, random input,
  cross-entropy, SGD) — forward + backward + optimizer step — at the precision, with
  ``torch.compile`` on CUDA, eager on CPU.
- ``measure_engine``: one SSL method through the project's own engine: the model from
  ``method.build_model``, the on-device ``ImagePool``, ``bench.ssl.engine``'s step function,
  optimizer, schedule and per-step work (loss ``.item()``, backward, clip, step, ``after_step``).
  View-passes/s = the model's own ``view_passes(batch)`` × steps / seconds.
- ``measure_finetune``: optimizer steps/s of the fine-tuning step (``bench.finetune.train``'s
  ``TrainStep``) at each shot count.
- ``measure_eval``: images/s of ``bench.finetune.inference.evaluate`` (honest protocol: whole
  images at native resolution, padded to a multiple of 32, into a confusion matrix).

Warm-up steps are never timed; on CUDA the clock is read between ``torch.cuda.synchronize()`` calls.
"""

from __future__ import annotations

import dataclasses
import math
import traceback
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.compile import should_compile
from bench.core.precision import Precision
from bench.core.schedules import warmup_then
from bench.data.cards import DatasetCard
from bench.data.images import LabeledImage
from bench.finetune.config import FinetuneConfig
from bench.finetune.inference import evaluate
from bench.finetune.train import ShotSampler, TrainStep
from bench.models.encoders import build_encoder
from bench.models.segmenter import build_segmenter
from bench.perf.probes import MemoryPeak, release, time_steps
from bench.perf.sizes import PerfSizes
from bench.ssl.augment import ImagePool
from bench.ssl.engine import (
    apply_step,
    build_optimizer,
    compile_target,
    compiled_step,
    sample_batch,
)
from bench.ssl.method import EncoderContext


def measure_ceiling(device: torch.device, sizes: PerfSizes, precision: Precision) -> dict[str, Any]:
    """Synthetic torchvision ResNet-50: random weights, random input and labels, CE, SGD step."""
    cuda = device.type == "cuda"
    seconds = _time_ceiling(device, sizes, precision)
    release(device)
    mode = "bf16 autocast + channels_last" if precision.bf16 else "fp32"
    return {
        "imgs_per_s": sizes.ceiling_batch * sizes.ceiling_steps / seconds,
        "model": "torchvision resnet50 (random weights), cross-entropy, SGD step",
        "mode": f"{mode} + torch.compile" if cuda else f"{mode} eager",
        "batch": sizes.ceiling_batch,
        "image_size": sizes.ceiling_size,
        "warmup": sizes.ceiling_warmup,
        "steps": sizes.ceiling_steps,
    }


def _time_ceiling(device: torch.device, sizes: PerfSizes, precision: Precision) -> float:
    import torchvision

    torch.manual_seed(0)
    model = precision.model(torchvision.models.resnet50(weights=None).to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(sizes.ceiling_batch, 3, sizes.ceiling_size, sizes.ceiling_size, device=device)
    x = precision.input(x)
    y = torch.randint(1000, (sizes.ceiling_batch,), device=device)
    forward = torch.compile(model) if device.type == "cuda" else model

    def step(_: int) -> None:
        with precision.autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    return time_steps(step, sizes.ceiling_warmup, sizes.ceiling_steps, device)


def measure_engine(
    method_cls: type,
    ctx: EncoderContext,
    pool: ImagePool,
    sizes: PerfSizes,
    compile_mode: str,
    precision: Precision,
) -> dict[str, Any]:
    """One SSL method through the project's engine: its model, the pool, the engine's step."""
    method = method_cls({"batch_size": sizes.batch, "view_size": sizes.view_size})
    cfg = method.engine_config(ctx.profile)
    nominal_steps = cfg.steps
    """The length of a real pretraining with this profile: what ``--compile auto`` looks at."""
    with MemoryPeak(ctx.device) as mem:
        timing = _time_engine(method, ctx, pool, sizes, cfg, compile_mode, nominal_steps, precision)
    release(ctx.device)
    return {
        "view_passes_per_s": timing["passes"] * sizes.steps / timing["seconds"],
        "peak_mem_gb": mem.cuda_gb,
        "peak_rss_delta_gb": mem.rss_delta_gb,
        "views_per_sample": timing["views"],
        "view_passes_per_step": timing["passes"],
        "batch": cfg.batch_size,
        "view_size": cfg.view_size,
        "optimizer": cfg.optimizer,
        "bn_views": cfg.bn_views,
        "compiled": timing["compiled"],
        "precision": precision.name,
        "nominal_run_steps": nominal_steps,
        "loss_finite": timing["finite"],
        "seconds": timing["seconds"],
        "steps": sizes.steps,
        "timed_after_warmup": sizes.warmup,
        "uses_labels": bool(method_cls.uses_labels),
    }


def _time_engine(
    method,
    ctx: EncoderContext,
    pool: ImagePool,
    sizes: PerfSizes,
    cfg,
    compile_mode: str,
    nominal_steps: int,
    precision: Precision,
) -> dict[str, Any]:
    device = ctx.device
    torch.manual_seed(0)
    model = precision.model(method.build_model(build_encoder(ctx.encoder), ctx, cfg).to(device))
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then(cfg.schedule, cfg.warmup_steps, nominal_steps)
    )
    generator = torch.Generator(device=device).manual_seed(0)
    step_fn = compiled_step(model, compile_mode, nominal_steps, precision)
    finite = True

    def step(i: int) -> None:
        nonlocal finite
        index = sample_batch(len(pool), cfg.batch_size, generator)
        loss = step_fn(pool, index, generator)
        finite = finite and math.isfinite(loss.item())
        apply_step(model, loss, optimizer, scheduler, cfg.grad_clip, (i + 1) / nominal_steps)

    seconds = time_steps(step, sizes.warmup, sizes.steps, device)
    return {
        "seconds": seconds,
        "finite": finite,
        "views": model.views_per_sample(),
        "passes": model.view_passes(cfg.batch_size),
        "compiled": compile_target(model, compile_mode, nominal_steps, device),
    }


def measure_finetune(
    card: DatasetCard,
    shots: list[LabeledImage],
    device: torch.device,
    sizes: PerfSizes,
    base_cfg: FinetuneConfig,
    precision: Precision,
    compile: str = "off",
) -> dict[str, Any]:
    """Optimizer steps/s of the fine-tuning step (``TrainStep``) at each shot count."""
    cfg = dataclasses.replace(
        base_cfg, arch=sizes.ft_arch, encoder=sizes.ft_encoder, crop=sizes.ft_crop
    )
    per_shots: dict[str, dict[str, Any]] = {}
    for n in sizes.ft_shots:
        key = str(n)
        if n > len(shots):
            per_shots[key] = {
                "steps_per_s": None,
                "batch": None,
                "error": f"only {len(shots)} labeled shot images available",
            }
            continue
        batch = min(n, sizes.ft_max_batch)
        try:
            with MemoryPeak(device) as mem:
                seconds = _time_finetune(
                    card, shots[:n], device, sizes, cfg, batch, compile, precision
                )
            per_shots[key] = {
                "steps_per_s": sizes.ft_steps / seconds,
                "batch": batch,
                "images_per_s": batch * sizes.ft_steps / seconds,
                "peak_mem_gb": mem.cuda_gb,
                "peak_rss_delta_gb": mem.rss_delta_gb,
            }
        except Exception as exc:  # e.g. a compile failure must not hide the rest
            per_shots[key] = {
                "steps_per_s": None,
                "batch": batch,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=3),
            }
        release(device)
    compiled = should_compile(compile, "finetune", cfg.steps, device)
    return {
        "arch": cfg.arch,
        "encoder": cfg.encoder,
        "crop": cfg.crop,
        "loss": cfg.loss,
        "optimizer": "AdamW",
        "batch_rule": f"min(shots, {sizes.ft_max_batch})",
        "compiled": (
            "CUDA graphs (torch.compile, reduce-overhead)"
            if device.type == "cuda"
            else "torch.compile"
        )
        if compiled
        else None,
        "precision": precision.name,
        "warmup": sizes.ft_warmup,
        "steps": sizes.ft_steps,
        "per_shots": per_shots,
    }


def _time_finetune(
    card: DatasetCard,
    shots: list[LabeledImage],
    device: torch.device,
    sizes: PerfSizes,
    cfg: FinetuneConfig,
    batch: int,
    compile: str,
    precision: Precision,
) -> float:
    torch.manual_seed(0)
    model = precision.model(build_segmenter(cfg.arch, cfg.encoder, card.num_classes).to(device))
    sampler = ShotSampler(shots, cfg.crop, np.random.default_rng(0))
    train_step = TrainStep(
        model, sampler, cfg, card.num_classes, device, compile, precision=precision
    )
    return time_steps(lambda i: train_step(batch, i), sizes.ft_warmup, sizes.ft_steps, device)


def measure_eval(
    card: DatasetCard,
    images: list[LabeledImage],
    device: torch.device,
    sizes: PerfSizes,
    precision: Precision,
) -> dict[str, Any]:
    """Images/s of ``evaluate`` (honest protocol, native resolution) on ``images``, each timed
    pass over all of them after ``eval_warmup`` untimed passes."""
    torch.manual_seed(0)
    model = precision.model(
        build_segmenter(sizes.ft_arch, sizes.ft_encoder, card.num_classes).to(device)
    ).eval()
    honest = card.all_protocols()[:1]

    def one_pass(_: int) -> None:
        evaluate(model, images, card, honest, device, 0, precision=precision)

    seconds = time_steps(one_pass, sizes.eval_warmup, sizes.eval_passes, device)
    release(device)
    return {
        "images_per_s": len(images) * sizes.eval_passes / seconds,
        "images": len(images),
        "image_shape": list(images[0].image.shape) if images else None,
        "arch": sizes.ft_arch,
        "encoder": sizes.ft_encoder,
        "precision": precision.name,
        "warmup_passes": sizes.eval_warmup,
        "passes": sizes.eval_passes,
    }
