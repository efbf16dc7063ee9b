"""``bench perf``: how fast the project's engines run on this device, against two references.

One run on one device measures, on the real unlabeled micrographs of a dataset card:

- ``ceiling_imgs_per_s``: a synthetic ResNet-50 classifier (torchvision, random weights, random
  input, cross-entropy, SGD) — forward + backward + optimizer step — in the best mode the device
  offers: bf16 autocast + channels_last + ``torch.compile`` on CUDA, plain fp32 eager on CPU.
- ``methods``: every registered SSL method through the project's own engine: the model from
  ``method.build_model``, the on-device ``ImagePool``, ``bench.pretrain``'s step function
  (``_compiled_step``), optimizer (``build_optimizer``) and schedule, with the engine's per-step
  work (loss ``.item()``, backward, clip, step, ``after_step``). View-passes/s = batch ×
  ``model.views_per_sample()`` × steps / seconds.
- ``seed_loop_view_passes_per_s``: the MatSSL seed code's loop (``bench.seedloop``: PIL + per-image
  torchvision transforms in DataLoader workers, fp32, two forward passes) on the same images.
- ``finetune_steps_per_s``: optimizer steps/s of few-shot fine-tuning at 1, 4 and 16 shots through
  ``bench.finetune``'s pieces (``ShotSampler``, ``normalize``, ``_forward``, ``make_loss``).
- ``finetune_epochs_per_s_aggregate``: N concurrent seed-style 1-shot fine-tunes (one process
  each; an epoch = one full-batch train step on the shot resized to 256² + predicting 8 validation
  images at 256²), total epochs/s summed over the processes, per N.

Warm-up steps are never timed; on CUDA the clock is read between ``torch.cuda.synchronize()``
calls. A figure that could not be measured is ``null`` with the reason beside it — never estimated.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import re
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.cards import DatasetCard
from bench.seedloop import cpu_count, seed_loop_view_passes_per_s, seed_workers

PERF_PROFILES = ("smoke", "standard")
REFERENCE_METHOD = "matssl"
"""The method whose network the seed loop runs (the ``ratio_to_seed`` of the others uses it too)."""


@dataclass(frozen=True)
class PerfSizes:
    """Everything that sets how much work one perf run does (recorded in the JSON)."""

    # SSL engine and seed loop
    ssl_encoder: str = "resnet50"
    batch: int = 128
    view_size: int = 224
    warmup: int = 3
    steps: int = 10
    pool_images: int = 0
    """Unlabeled images in the pool and the seed loop's file list (0: all)."""
    seed_workers: int = -1
    """DataLoader workers of the seed loop (-1: the seed's 4, capped at the CPU count)."""
    # synthetic ResNet-50 ceiling
    ceiling_batch: int = 256
    ceiling_size: int = 224
    ceiling_warmup: int = 5
    ceiling_steps: int = 20
    # few-shot fine-tuning
    ft_arch: str = "unetplusplus"
    ft_encoder: str = "resnet50"
    ft_crop: int = 256
    ft_max_batch: int = 8
    ft_shots: tuple[int, ...] = (1, 4, 16)
    ft_warmup: int = 3
    ft_steps: int = 20
    # concurrent seed-style fine-tunes
    agg_procs: tuple[int, ...] = (1, 4, 8)
    agg_size: int = 256
    agg_val_images: int = 8
    agg_warmup: int = 2
    agg_seconds: float = 20.0


def sizes_for(profile: str, device: torch.device) -> PerfSizes:
    """``standard``: the GPU-sized benchmark; ``smoke``: minutes on a 2-core CPU."""
    if profile == "standard":
        procs = (1, 4, 8) if device.type == "cuda" else _cpu_procs()
        return PerfSizes(agg_procs=procs)
    if profile == "smoke":
        procs = (1, 4, 8) if device.type == "cuda" else _cpu_procs()
        return PerfSizes(
            batch=8, view_size=64, warmup=1, steps=4, pool_images=32,
            ceiling_batch=8, ceiling_size=64, ceiling_warmup=1, ceiling_steps=4,
            ft_arch="unet", ft_encoder="resnet18", ft_crop=128, ft_warmup=1, ft_steps=5,
            agg_procs=procs, agg_warmup=1, agg_seconds=6.0,
        )
    raise ValueError(f"unknown perf profile '{profile}'; choose {', '.join(PERF_PROFILES)}")


def _cpu_procs() -> tuple[int, ...]:
    return (1, 2) if cpu_count() >= 2 else (1,)


# ---------------------------------------------------------------------------------------------
# Timing and memory helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[int], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds taken by ``steps`` calls of ``step(i)`` after ``warmup`` untimed ones."""
    for i in range(warmup):
        step(i)
    _sync(device)
    started = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    _sync(device)
    return time.perf_counter() - started


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class MemoryPeak:
    """Peak memory of a block: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak RSS
    above the RSS at entry, sampled every 5 ms from ``/proc/self/statm`` by a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda_gb: float | None = None
        self.rss_delta_gb: float | None = None
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MemoryPeak":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._base = _rss_bytes()
        if self._base is not None:
            self._peak = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            rss = _rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_gb = torch.cuda.max_memory_allocated(self.device) / 1e9
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            rss = _rss_bytes() or 0
            self.rss_delta_gb = (max(self._peak, rss) - self._base) / 1e9


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Device description


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_count()} cores, {cpu_model()})"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


# ---------------------------------------------------------------------------------------------
# The measurements


def measure_ceiling(device: torch.device, sizes: PerfSizes) -> dict[str, Any]:
    """Synthetic torchvision ResNet-50: random weights, random input and labels, CE, SGD step."""
    import torchvision

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(sizes.ceiling_batch, 3, sizes.ceiling_size, sizes.ceiling_size, device=device)
    y = torch.randint(1000, (sizes.ceiling_batch,), device=device)
    forward = model
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        forward = torch.compile(model)

    def step(_: int) -> None:
        if cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(forward(x), y)
        else:
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    seconds = time_steps(step, sizes.ceiling_warmup, sizes.ceiling_steps, device)
    del model, forward, optimizer, x, y
    _release(device)
    return {
        "imgs_per_s": sizes.ceiling_batch * sizes.ceiling_steps / seconds,
        "model": "torchvision resnet50 (random weights), cross-entropy, SGD step",
        "mode": "bf16 autocast + channels_last + torch.compile" if cuda else "fp32 eager",
        "batch": sizes.ceiling_batch,
        "image_size": sizes.ceiling_size,
        "warmup": sizes.ceiling_warmup,
        "steps": sizes.ceiling_steps,
    }


def compile_used(mode: str, total_steps: int, device: torch.device, model=None) -> str | None:
    """What ``bench.pretrain._compiled_step`` compiles for this mode (mirrors its rule): None,
    ``"whole step"`` or ``"encoder"`` (methods with data-dependent shapes)."""
    if not (mode == "on" or (mode == "auto" and total_steps >= 2000 and device.type == "cuda")):
        return None
    return "whole step" if getattr(model, "compile_whole_step", True) else "encoder"


def _view_passes(model, batch: int) -> int:
    """The engine's own count of encoder view-passes per step (``SSLModel.view_passes``)."""
    if hasattr(model, "view_passes"):
        return int(model.view_passes(batch))
    return int(model.views_per_sample()) * batch


def _batch_sampler():
    """The engine's batch sampler (``bench.pretrain.sample_batch``; random indices if absent)."""
    import bench.pretrain as pretrain

    sample = getattr(pretrain, "sample_batch", None)
    if sample is not None:
        return sample
    return lambda size, batch, generator: torch.randint(size, (batch,), generator=generator,
                                                        device=generator.device)


def measure_engine(method_cls: type, ctx, pool, sizes: PerfSizes, compile_mode: str) -> dict[str, Any]:
    """One SSL method through the project's engine: its model, the pool, ``_compiled_step``."""
    from segmentation_models_pytorch.encoders import get_encoder

    from bench.pretrain import _compiled_step, apply_step, build_optimizer, schedule_factor

    device = ctx.device
    method = method_cls({"batch_size": sizes.batch, "view_size": sizes.view_size})
    cfg = method.engine_config(ctx.profile)
    steps_per_epoch = cfg.steps_per_epoch or max(1, len(pool) // cfg.batch_size)
    nominal_steps = cfg.epochs * steps_per_epoch
    """The length of a real pretraining with this profile: what ``--compile auto`` looks at."""
    timed = sizes.warmup + sizes.steps
    with MemoryPeak(device) as mem:
        torch.manual_seed(0)
        encoder = get_encoder(ctx.encoder, in_channels=3, depth=5, weights=None)
        model = method.build_model(encoder, ctx, cfg).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(cfg, model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, schedule_factor(cfg, steps_per_epoch, nominal_steps))
        generator = torch.Generator(device=device).manual_seed(0)
        compiled = compile_used(compile_mode, nominal_steps, device, model)
        step_fn = _compiled_step(model, compile_mode, nominal_steps)
        sample_batch = _batch_sampler()
        finite = [True]

        def step(i: int) -> None:
            index = sample_batch(len(pool), cfg.batch_size, generator)
            loss = step_fn(pool, index, generator)
            if not math.isfinite(loss.item()):
                finite[0] = False
            apply_step(model, loss, optimizer, scheduler, cfg.grad_clip, (i + 1) / nominal_steps)

        seconds = time_steps(step, sizes.warmup, sizes.steps, device)
    views = model.views_per_sample()
    passes = _view_passes(model, cfg.batch_size)
    del model, optimizer, scheduler, step_fn, encoder
    _release(device)
    return {
        "view_passes_per_s": passes * sizes.steps / seconds,
        "peak_mem_gb": mem.cuda_gb,
        "peak_rss_delta_gb": mem.rss_delta_gb,
        "views_per_sample": views,
        "view_passes_per_step": passes,
        "batch": cfg.batch_size,
        "view_size": cfg.view_size,
        "optimizer": cfg.optimizer,
        "bn_views": cfg.bn_views,
        "compiled": compiled,
        "nominal_run_steps": nominal_steps,
        "loss_finite": finite[0],
        "seconds": seconds,
        "steps": sizes.steps,
        "timed_after_warmup": sizes.warmup,
        "uses_labels": bool(getattr(method_cls, "uses_labels", False)),
    }


def measure_finetune(card: DatasetCard, shots, device: torch.device, sizes: PerfSizes,
                     base_cfg, compile: str = "off") -> dict[str, Any]:
    """Optimizer steps/s of ``bench.finetune.TrainStep`` (the fine-tuning step) at each shot count."""
    from bench.finetune import ShotSampler, TrainStep, build_segmenter, use_compile

    cfg = dataclasses.replace(base_cfg, arch=sizes.ft_arch, encoder=sizes.ft_encoder,
                              crop=sizes.ft_crop)
    per_shots: dict[str, dict[str, Any]] = {}
    for n in sizes.ft_shots:
        key = str(n)
        if n > len(shots):
            per_shots[key] = {"steps_per_s": None, "batch": None,
                              "error": f"only {len(shots)} labeled shot images available"}
            continue
        batch = min(n, sizes.ft_max_batch)
        try:
            with MemoryPeak(device) as mem:
                torch.manual_seed(0)
                model = build_segmenter(cfg, card.num_classes, None).to(device)
                if device.type == "cuda":
                    model = model.to(memory_format=torch.channels_last)
                sampler = ShotSampler(shots[:n], cfg.crop, np.random.default_rng(0))
                train_step = TrainStep(model, sampler, cfg, card.num_classes, device, compile)
                seconds = time_steps(lambda i: train_step(batch, i), sizes.ft_warmup, sizes.ft_steps,
                                     device)
            per_shots[key] = {"steps_per_s": sizes.ft_steps / seconds, "batch": batch,
                              "images_per_s": batch * sizes.ft_steps / seconds,
                              "peak_mem_gb": mem.cuda_gb, "peak_rss_delta_gb": mem.rss_delta_gb}
        except Exception as exc:  # noqa: BLE001 - e.g. a compile failure must not hide the rest
            per_shots[key] = {"steps_per_s": None, "batch": batch,
                              "error": f"{type(exc).__name__}: {exc}",
                              "traceback": traceback.format_exc(limit=3)}
        _release(device)
    return {
        "arch": cfg.arch, "encoder": cfg.encoder, "crop": cfg.crop, "loss": cfg.loss,
        "optimizer": "AdamW", "batch_rule": f"min(shots, {sizes.ft_max_batch})",
        "compiled": ("CUDA graphs (torch.compile, reduce-overhead)" if device.type == "cuda"
                     else "torch.compile") if use_compile(compile, cfg.steps, device) else None,
        "precision": "bf16 autocast + channels_last (bench.finetune._forward)"
        if device.type == "cuda" else "fp32",
        "warmup": sizes.ft_warmup, "steps": sizes.ft_steps, "per_shots": per_shots,
    }


# --- concurrent seed-style fine-tunes -----------------------------------------------------------


def _aggregate_worker(spec: dict[str, Any], barrier, results) -> None:
    """One seed-style 1-shot fine-tune in its own process; reports (rank, epochs, seconds, error)."""
    rank = spec["rank"]
    try:
        torch.set_num_threads(spec["threads"])
        from bench.finetune import (_forward, _resize_mask, build_segmenter, make_loss, normalize,
                                    predict)
        from bench.metrics import ConfusionMatrix
        from bench.profiles import FinetuneConfig

        device = torch.device(spec["device"])
        size = spec["size"]
        torch.manual_seed(rank)
        cfg = FinetuneConfig(arch=spec["arch"], encoder=spec["encoder"])
        model = build_segmenter(cfg, spec["num_classes"], None).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_fn = make_loss("dice", spec["num_classes"])
        from bench.cards import load_card
        from bench.data import load_labeled

        card = load_card(spec["dataset"])
        root = Path(spec["data_root"])
        shot = load_labeled(card, root, [spec["shot"]])[0]
        image, mask = shot.image, shot.mask
        x = F.interpolate(normalize(torch.from_numpy(image)[None].to(device)), size=(size, size),
                          mode="bilinear", align_corners=False)
        y = F.interpolate(torch.from_numpy(mask)[None, None].float().to(device), size=(size, size),
                          mode="nearest")[:, 0].long()
        val = [(v.image, _resize_mask(v.mask, (size, size)))
               for v in load_labeled(card, root, spec["val"])]

        def epoch() -> None:
            model.train()
            loss = loss_fn(_forward(model, x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
            model.eval()
            cm = ConfusionMatrix(spec["num_classes"])
            for im, m in val:
                cm.update(predict(model, im, device, size=(size, size)), m)

        for _ in range(spec["warmup"]):
            epoch()
        _sync(device)
        barrier.wait(timeout=900)
        started = time.perf_counter()
        count = 0
        while True:
            epoch()
            count += 1
            elapsed = time.perf_counter() - started
            if elapsed >= spec["seconds"]:
                break
        results.put((rank, count, elapsed, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass
        results.put((rank, 0, 0.0, f"{type(exc).__name__}: {exc}"))


def measure_aggregate(card: DatasetCard, data_root: Path, shot: str, val: list[str],
                      device: torch.device, sizes: PerfSizes, total_threads: int) -> dict[str, Any]:
    """Total epochs/s of N concurrent 1-shot fine-tunes, each in its own (spawned) process.

    ``shot`` and ``val`` are image stems; every process loads them itself.
    """
    ctx = mp.get_context("spawn")
    per_n: dict[str, float | None] = {}
    detail: dict[str, Any] = {}
    val = val[: sizes.agg_val_images]
    for n in sizes.agg_procs:
        threads = max(1, total_threads // n)
        barrier = ctx.Barrier(n)
        results = ctx.Queue()
        procs = []
        for rank in range(n):
            spec = {"rank": rank, "threads": threads, "device": str(device), "size": sizes.agg_size,
                    "arch": sizes.ft_arch, "encoder": sizes.ft_encoder,
                    "num_classes": card.num_classes, "dataset": card.full_name,
                    "data_root": str(data_root), "shot": shot, "val": val, "warmup": sizes.agg_warmup, "seconds": sizes.agg_seconds}
            proc = ctx.Process(target=_aggregate_worker, args=(spec, barrier, results), daemon=True)
            proc.start()
            procs.append(proc)
        reports, errors = _collect(procs, results, n, timeout=900 + sizes.agg_seconds)
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
        if errors or len(reports) < n:
            per_n[str(n)] = None
            detail[str(n)] = {"error": "; ".join(errors) or f"only {len(reports)} of {n} "
                              "processes reported", "threads_per_process": threads}
            continue
        rates = [count / seconds for _, count, seconds, _ in reports]
        per_n[str(n)] = sum(rates)
        detail[str(n)] = {"per_process_epochs_per_s": rates,
                          "epochs": [count for _, count, _, _ in reports],
                          "threads_per_process": threads}
    return {
        "per_n": per_n,
        "detail": detail,
        "epoch": (f"one full-batch train step on the 1 shot resized to {sizes.agg_size}² (Dice, "
                  f"Adam 1e-4) + predicting {len(val)} validation images at "
                  f"{sizes.agg_size}² (bench.finetune.predict) into a confusion matrix"),
        "arch": sizes.ft_arch, "encoder": sizes.ft_encoder,
        "precision": "bf16 autocast + channels_last (bench.finetune._forward)"
        if device.type == "cuda" else "fp32",
        "val_images": len(val), "shot": shot, "warmup_epochs": sizes.agg_warmup,
        "seconds_per_process": sizes.agg_seconds,
        "start": "spawned processes; timing starts at a barrier after model build and warm-up",
    }


def _collect(procs, results, n: int, timeout: float) -> tuple[list[tuple], list[str]]:
    reports, errors = [], []
    deadline = time.monotonic() + timeout
    while len(reports) + len(errors) < n and time.monotonic() < deadline:
        try:
            rank, count, seconds, error = results.get(timeout=1.0)
        except queue_mod.Empty:
            if not any(p.is_alive() for p in procs):
                try:  # a last report may still be in the pipe
                    rank, count, seconds, error = results.get(timeout=1.0)
                except queue_mod.Empty:
                    dead = [p.exitcode for p in procs]
                    errors.append(f"worker(s) exited without a report (exit codes {dead})")
                    break
            else:
                continue
        if error:
            errors.append(f"process {rank}: {error}")
        else:
            reports.append((rank, count, seconds, error))
    if len(reports) + len(errors) < n and not errors:
        errors.append("timed out waiting for the workers")
    return reports, errors


# ---------------------------------------------------------------------------------------------
# The whole run


@dataclass
class PerfOptions:
    device: torch.device
    profile: str
    data_root: Path
    methods: list[str] | None = None
    """SSL method names (None: every registered SSL method)."""
    compile: str = "auto"
    threads: int | None = None
    dataset: str = "metaldam"
    command: str = "python -m bench perf"
    sizes: PerfSizes | None = None
    log: Callable[[str], None] = print


def ssl_method_names(selected: list[str] | None = None) -> list[str]:
    from bench.errors import BenchError
    from bench.registry import all_methods, get_method

    if selected is None:
        return [m.name for m in all_methods() if m.kind == "ssl"]
    for name in selected:
        if get_method(name).kind != "ssl":
            raise BenchError(f"'{name}' is not an SSL method (perf times pretraining methods)")
    return list(selected)


def run_perf(opts: PerfOptions) -> dict[str, Any]:
    """Measure everything on ``opts.device``; returns the JSON-ready record."""
    from bench.augment import ImagePool
    from bench.cards import load_card
    from bench.data import load_labeled, load_unlabeled, unlabeled_files
    from bench.method import EncoderContext
    from bench.profiles import get_profile
    from bench.protocol import partition
    from bench.registry import get_method

    device = opts.device
    sizes = opts.sizes or sizes_for(opts.profile, device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    threads = torch.get_num_threads()
    names = ssl_method_names(opts.methods)
    card = load_card(opts.dataset)
    log = opts.log

    limit = sizes.pool_images or None
    files = unlabeled_files(card, opts.data_root)[:limit]
    pool = ImagePool(load_unlabeled(card, opts.data_root, limit), device)
    crop_bottom = card.unlabeled.crop_bottom if card.unlabeled else 0
    part = partition(card, opts.data_root)
    shots = load_labeled(card, opts.data_root, part.pool[: max(sizes.ft_shots, default=1)])
    val_stems = (part.val + part.test)[: sizes.agg_val_images]
    notes: list[str] = []

    log(f"ceiling: synthetic ResNet-50, batch {sizes.ceiling_batch} at {sizes.ceiling_size}²")
    ceiling = measure_ceiling(device, sizes)
    ceiling_rate = ceiling["imgs_per_s"]

    log(f"seed loop: MatSSL seed-style, batch {sizes.batch} at {sizes.view_size}²")
    workers = seed_workers() if sizes.seed_workers < 0 else sizes.seed_workers
    try:
        seed_rate: float | None = seed_loop_view_passes_per_s(
            files, device, sizes.batch, sizes.view_size, sizes.warmup, sizes.steps, workers,
            sizes.ssl_encoder, crop_bottom)
        seed_error = None
    except Exception as exc:  # noqa: BLE001 - recorded, the other figures still stand
        seed_rate, seed_error = None, f"{type(exc).__name__}: {exc}"
        notes.append(f"seed loop failed: {seed_error}")
    _release(device)

    methods: dict[str, dict[str, Any]] = {}
    for name in names:
        method_cls = get_method(name)
        log(f"engine: {name}, batch {sizes.batch} at {sizes.view_size}²")
        ctx = EncoderContext(card=card, data_root=opts.data_root, encoder=sizes.ssl_encoder,
                             init="random", profile=opts.profile, seed=0, device=device,
                             cache_dir=Path("results/cache"), compile=opts.compile,
                             shots=shots[:1] if method_cls.uses_labels else [])
        try:
            entry = measure_engine(method_cls, ctx, pool, sizes, opts.compile)
        except Exception as exc:  # noqa: BLE001 - one broken method must not hide the others
            entry = {"view_passes_per_s": None, "peak_mem_gb": None, "peak_rss_delta_gb": None,
                     "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=3)}
            _release(device)
        rate = entry["view_passes_per_s"]
        entry["ratio_to_ceiling"] = rate / ceiling_rate if rate else None
        entry["ratio_to_seed"] = rate / seed_rate if rate and seed_rate else None
        methods[name] = entry
    del pool
    _release(device)

    log(f"fine-tuning: {sizes.ft_arch}/{sizes.ft_encoder} at {sizes.ft_crop}², shots "
        f"{', '.join(map(str, sizes.ft_shots))}")
    finetune = measure_finetune(card, shots, device, sizes, get_profile(opts.profile).finetune,
                                opts.compile)

    log(f"concurrent 1-shot fine-tunes: N = {', '.join(map(str, sizes.agg_procs))}")
    total_threads = threads if device.type == "cpu" else cpu_count()
    aggregate = measure_aggregate(card, opts.data_root, shots[0].stem, val_stems, device, sizes,
                                  total_threads)

    cuda = device.type == "cuda"
    record: dict[str, Any] = {
        "device": describe_device(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "date": datetime.now().strftime("%Y-%m-%d"),
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "profile": opts.profile,
        "command": opts.command,
        "dataset": card.full_name,
        "batch": sizes.batch,
        "view_size": sizes.view_size,
        "steps": sizes.steps,
        "warmup_steps": sizes.warmup,
        "sizes": dataclasses.asdict(sizes),
        "pool_images": len(files),
        "torch_threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda": {"name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                 "memory_gb": torch.cuda.get_device_properties(device).total_memory / 1e9}
        if cuda else None,
        "compile": opts.compile,
        "ceiling_imgs_per_s": ceiling_rate,
        "ceiling": ceiling,
        "methods": methods,
        "peak_mem_kind": ("torch.cuda.max_memory_allocated during model build + timed steps "
                          "(GB = 1e9 bytes, includes the on-device image pool)" if cuda else
                          "peak_mem_gb is CUDA-only (null); peak_rss_delta_gb = peak process RSS "
                          "above the RSS before the model was built, sampled every 5 ms from "
                          "/proc/self/statm (GB = 1e9 bytes); a lower bound: memory freed by an earlier "
                          "measurement and reused by the allocator does not show"),
        "seed_loop_view_passes_per_s": seed_rate,
        "seed_loop": {
            "network": f"torchvision {sizes.ssl_encoder} + gated 4-stage fusion + SimCLR head, "
                       "NT-Xent τ 0.07, SGD 0.1, two separate forward passes, fp32",
            "data": "PIL decode + per-image torchvision views (Resize → RandomResizedCrop 0.2–1 → "
                    "ColorJitter p0.8 → RandomGrayscale 0.2 → GaussianBlur p0.5 → HFlip → "
                    "ToTensor → Normalize) in DataLoader workers",
            "workers": workers, "batch": sizes.batch, "view_size": sizes.view_size,
            "error": seed_error,
        },
        "finetune_steps_per_s": {k: v["steps_per_s"] for k, v in finetune["per_shots"].items()},
        "finetune": finetune,
        "finetune_epochs_per_s_aggregate": aggregate["per_n"],
        "aggregate": aggregate,
        "ratios": {
            "engine_over_seed_matssl": (methods.get(REFERENCE_METHOD) or {}).get("ratio_to_seed"),
            "engine_over_seed": {m: e["ratio_to_seed"] for m, e in methods.items()},
            "engine_over_ceiling": {m: e["ratio_to_ceiling"] for m, e in methods.items()},
        },
        "notes": notes + _standard_notes(device, sizes),
    }
    try:
        from bench.store import collect_versions, git_commit

        record["versions"] = collect_versions()
        record["git_commit"] = git_commit()
    except Exception:  # noqa: BLE001 - provenance is best-effort
        pass
    return record


def _standard_notes(device: torch.device, sizes: PerfSizes) -> list[str]:
    notes = [
        "view-passes per step = the engine's own count, model.view_passes(batch) (batch × "
        "views_per_sample(); PSCL adds its labeled shots); the work behind a view-pass differs: "
        "DenseCL's key view is a no-grad pass (no backward, so it can beat the fwd+bwd "
        "ceiling), BYOL adds two uncounted no-grad target passes",
        f"ratio_to_seed divides by the MatSSL seed loop for every method (the seed network is "
        f"MatSSL's); ratio_to_ceiling divides by the synthetic ResNet-50 at "
        f"{sizes.ceiling_size}² (engine views are {sizes.view_size}², encoder {sizes.ssl_encoder})",
        "the engine draws views on the device from the pre-decoded pool; the seed loop decodes "
        "every file with PIL each time, as the seed code does",
    ]
    if device.type == "cpu":
        notes.append("CPU run: CUDA-only figures (peak_mem_gb, cuda) are null; figures depend on "
                     "the load of the machine (see load_average)")
    return notes


def output_path(record: dict[str, Any], out_dir: Path) -> Path:
    return out_dir / f"{slug(record['device'])}-{record['date']}.json"


def write_record(record: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = output_path(record, out_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Table


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if value and abs(value) < 10 ** -digits * 5:
        return f"{value:.3g}"
    return f"{value:,.{digits}f}"


def render_table(record: dict[str, Any]):
    from rich.table import Table

    sizes = record["sizes"]
    table = Table(title=f"bench perf — {record['device']} — torch {record['torch']} — "
                        f"{record['date']} — profile {record['profile']}",
                  caption=f"SSL: {sizes['ssl_encoder']}, batch {record['batch']}, "
                          f"{record['view_size']}² views, {record['steps']} timed steps after "
                          f"{record['warmup_steps']} warm-up; {record['torch_threads']} torch "
                          f"thread(s); command: {record['command']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("÷ ceiling", justify="right")
    table.add_column("÷ seed", justify="right")
    table.add_column("peak GPU mem GB" if record["device_type"] == "cuda" else "peak RSS Δ GB",
                     justify="right")
    table.add_column("how")
    ceiling = record["ceiling"]
    table.add_row("ceiling: ResNet-50 classifier", _fmt(record["ceiling_imgs_per_s"]), "img/s",
                  "1.00", "", "", f"{ceiling['mode']}, batch {ceiling['batch']} at "
                  f"{ceiling['image_size']}²")
    seed = record["seed_loop_view_passes_per_s"]
    table.add_row("seed loop (MatSSL)", _fmt(seed), "view-passes/s",
                  _fmt(seed / record["ceiling_imgs_per_s"], 2) if seed else "—", "1.00", "",
                  f"PIL + torchvision, {record['seed_loop']['workers']} workers, fp32"
                  + (f" — {record['seed_loop']['error']}" if record["seed_loop"]["error"] else ""))
    cuda = record["device_type"] == "cuda"
    for name, entry in record["methods"].items():
        mem = entry.get("peak_mem_gb") if cuda else entry.get("peak_rss_delta_gb")
        how = entry.get("error") or (
            f"engine, {entry['view_passes_per_step']} view-passes/step"
            + (f", compiled: {entry['compiled']}" if entry.get("compiled") else "")
            + ("" if entry.get("loss_finite", True) else ", loss not finite"))
        table.add_row(f"engine: {name}", _fmt(entry["view_passes_per_s"]), "view-passes/s",
                      _fmt(entry["ratio_to_ceiling"], 2), _fmt(entry["ratio_to_seed"], 2),
                      _fmt(mem, 2), how)
    ft = record["finetune"]
    for shots, entry in ft["per_shots"].items():
        table.add_row(f"fine-tune {shots}-shot", _fmt(entry["steps_per_s"], 2), "steps/s", "", "",
                      _fmt(entry.get("peak_mem_gb") if cuda else entry.get("peak_rss_delta_gb"), 2),
                      entry.get("error") or f"{ft['arch']}/{ft['encoder']}, batch {entry['batch']} "
                      f"× {ft['crop']}²")
    agg = record["aggregate"]
    for n, value in record["finetune_epochs_per_s_aggregate"].items():
        detail = agg["detail"].get(n, {})
        table.add_row(f"{n} concurrent 1-shot fine-tune(s)", _fmt(value, 2), "epochs/s (total)",
                      "", "", "", detail.get("error") or f"{agg['arch']}/{agg['encoder']}, "
                      f"{detail.get('threads_per_process')} thread(s)/process")
    return table
