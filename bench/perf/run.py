"""``bench perf``: how fast the project's engines run on this device, against two references.

The measurements live in ``bench.perf.measure`` (single process), ``bench.perf.concurrent`` (N
processes) and ``bench.perf.seedloop`` (the seed code's loop); ``run_perf`` runs them all and builds
the JSON record (``bench.perf.record``), ``bench.perf.table`` prints it.

One run on one device measures, on the real unlabeled micrographs of a dataset card:

- ``ceiling_imgs_per_s``: a synthetic ResNet-50 classifier (torchvision, random weights, random
  input, cross-entropy, SGD) — forward + backward + optimizer step — at the precision, with
  ``torch.compile`` on CUDA, eager on CPU.
- ``methods``: every registered SSL method through the project's own engine: the model from
  ``method.build_model``, the on-device ``ImagePool``, ``bench.ssl.engine``'s step function
  (``compiled_step``), optimizer (``build_optimizer``) and schedule, with the engine's per-step
  work (loss ``.item()``, backward, clip, step, ``after_step``). View-passes/s = batch ×
  ``model.views_per_sample()`` × steps / seconds.
- ``seed_loop_view_passes_per_s``: the MatSSL seed code's loop (``bench.perf.seedloop``: PIL +
  per-image torchvision transforms in DataLoader workers, fp32, two forward passes) on the same
  images.
- ``finetune_steps_per_s``: optimizer steps/s of few-shot fine-tuning at 1, 4 and 16 shots through
  the fine-tuning step (``bench.finetune.train.TrainStep``).
- ``eval_images_per_s``: evaluation (``bench.finetune.inference.evaluate``) of validation/test
  images at native resolution.
- ``finetune_epochs_per_s_aggregate``: N concurrent seed-style 1-shot fine-tunes (one process
  each; an epoch = one full-batch train step on the shot resized to 256² + predicting 8 validation
  images at 256²), total epochs/s summed over the processes, per N.
- ``precision_compare``: the ceiling, every engine, fine-tuning and evaluation measured at fp32
  and at bf16 (autocast + channels_last) in the same run, interleaved measurement by measurement
  (``{"fp32": {...}, "bf16": {...}}``), and ``precision_ratios`` = bf16 ÷ fp32. The other figures
  are those of ``--precision`` (auto: bf16 where the device has it, ``bench.core.precision``);
  the seed loop is fp32, as the seed code.

Warm-up steps are never timed; on CUDA the clock is read between ``torch.cuda.synchronize()``
calls. A figure that could not be measured is ``null`` with the reason beside it — never estimated.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from bench.core.cpus import cpu_count
from bench.core.devices import describe_device
from bench.core.errors import BenchError
from bench.core.precision import Precision, resolve_precision
from bench.core.provenance import collect_versions, git_commit
from bench.data.cards import load_card
from bench.data.pool import load_pool, pool_files
from bench.data.protocol import partition
from bench.data.sources import load_labeled
from bench.perf.concurrent import measure_aggregate
from bench.perf.measure import measure_ceiling, measure_engine, measure_eval, measure_finetune
from bench.perf.probes import release
from bench.perf.seedloop import seed_loop_view_passes_per_s, seed_workers
from bench.perf.sizes import PerfSizes, sizes_for
from bench.profiles import get_profile
from bench.ssl.augment import ImagePool
from bench.ssl.method import EncoderContext
from bench.ssl.registry import all_methods, get_method

REFERENCE_METHOD = "matssl"
"""The method whose network the seed loop runs (the ``ratio_to_seed`` of the others uses it too)."""


@dataclass
class PerfOptions:
    device: torch.device
    profile: str
    data_root: Path
    methods: list[str] | None = None
    """SSL method names (None: every registered SSL method)."""
    compile: str = "auto"
    precision: str = "auto"
    """The precision of the main figures; ``precision_compare`` always measures fp32 and bf16."""
    threads: int | None = None
    dataset: str = "metaldam"
    command: str = "python -m bench perf"
    sizes: PerfSizes | None = None
    log: Callable[[str], None] = print


def ssl_method_names(selected: list[str] | None = None) -> list[str]:
    if selected is None:
        return [m.name for m in all_methods() if m.kind == "ssl"]
    for name in selected:
        if get_method(name).kind != "ssl":
            raise BenchError(f"'{name}' is not an SSL method (perf times pretraining methods)")
    return list(selected)


def compared_precisions(device: torch.device) -> tuple[list[Precision], list[str]]:
    """fp32 and bf16 on ``device`` (bf16 left out, with a note, where the device cannot run it)."""
    precisions = [resolve_precision("fp32", device)]
    try:
        precisions.append(resolve_precision("bf16", device))
        return precisions, []
    except BenchError as exc:
        return precisions, [f"bf16 not measured: {exc}"]


def run_perf(opts: PerfOptions) -> dict[str, Any]:
    """Measure everything on ``opts.device``; returns the JSON-ready record."""
    device = opts.device
    sizes = opts.sizes or sizes_for(opts.profile, device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    threads = torch.get_num_threads()
    names = ssl_method_names(opts.methods)
    card = load_card(opts.dataset)
    log = opts.log

    limit = sizes.pool_images or None
    files = pool_files(card, opts.data_root)[:limit]
    pool = ImagePool(load_pool(card, opts.data_root, limit), device)
    crop_bottom = card.unlabeled.crop_bottom if card.unlabeled else 0
    part = partition(card, opts.data_root)
    shots = load_labeled(card, opts.data_root, part.pool[: max(sizes.ft_shots, default=1)])
    val_stems = (part.val + part.test)[: sizes.agg_val_images]
    eval_images = load_labeled(card, opts.data_root, (part.val + part.test)[: sizes.eval_images])
    main = resolve_precision(opts.precision, device)
    precisions, notes = compared_precisions(device)
    if main.name not in {p.name for p in precisions}:
        precisions.append(main)
    at: dict[str, dict[str, Any]] = {p.name: {"methods": {}} for p in precisions}

    log(f"ceiling: synthetic ResNet-50, batch {sizes.ceiling_batch} at {sizes.ceiling_size}²")
    for p in precisions:
        at[p.name]["ceiling"] = measure_ceiling(device, sizes, p)
    ceiling = at[main.name]["ceiling"]
    ceiling_rate = ceiling["imgs_per_s"]

    log(f"seed loop: MatSSL seed-style, batch {sizes.batch} at {sizes.view_size}²")
    workers = seed_workers() if sizes.seed_workers < 0 else sizes.seed_workers
    try:
        seed_rate: float | None = seed_loop_view_passes_per_s(
            files,
            device,
            sizes.batch,
            sizes.view_size,
            sizes.warmup,
            sizes.steps,
            workers,
            sizes.ssl_encoder,
            crop_bottom,
        )
        seed_error = None
    except Exception as exc:  # recorded, the other figures still stand
        seed_rate, seed_error = None, f"{type(exc).__name__}: {exc}"
        notes.append(f"seed loop failed: {seed_error}")
    release(device)

    methods: dict[str, dict[str, Any]] = {}
    for name in names:
        method_cls = get_method(name)
        log(f"engine: {name}, batch {sizes.batch} at {sizes.view_size}²")
        ctx = EncoderContext(
            card=card,
            data_root=opts.data_root,
            encoder=sizes.ssl_encoder,
            init="random",
            profile=opts.profile,
            seed=0,
            device=device,
            cache_dir=Path("results/cache"),
            compile=opts.compile,
            shots=shots[:1] if method_cls.uses_labels else [],
        )
        for p in precisions:
            at[p.name]["methods"][name] = _engine_entry(method_cls, ctx, pool, sizes, opts, p)
        entry = at[main.name]["methods"][name]
        rate = entry["view_passes_per_s"]
        entry["ratio_to_ceiling"] = rate / ceiling_rate if rate else None
        entry["ratio_to_seed"] = rate / seed_rate if rate and seed_rate else None
        methods[name] = entry
    del pool
    release(device)

    log(
        f"fine-tuning: {sizes.ft_arch}/{sizes.ft_encoder} at {sizes.ft_crop}², shots "
        f"{', '.join(map(str, sizes.ft_shots))}"
    )
    for p in precisions:
        at[p.name]["finetune"] = measure_finetune(
            card, shots, device, sizes, get_profile(opts.profile).finetune, p, opts.compile
        )
    finetune = at[main.name]["finetune"]

    log(f"evaluation: {len(eval_images)} images at native resolution")
    for p in precisions:
        at[p.name]["eval"] = _eval_entry(card, eval_images, device, sizes, p)

    log(f"concurrent 1-shot fine-tunes: N = {', '.join(map(str, sizes.agg_procs))}")
    total_threads = threads if device.type == "cpu" else cpu_count()
    aggregate = measure_aggregate(
        card, opts.data_root, shots[0].stem, val_stems, device, sizes, total_threads, main
    )
    compare = {p.name: _compare_entry(at[p.name]) for p in precisions if p.name in PAIR}

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
        "cuda": {
            "name": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "memory_gb": torch.cuda.get_device_properties(device).total_memory / 1e9,
        }
        if cuda
        else None,
        "compile": opts.compile,
        "precision": main.name,
        "precision_reason": main.reason,
        "ceiling_imgs_per_s": ceiling_rate,
        "ceiling": ceiling,
        "methods": methods,
        "peak_mem_kind": (
            "torch.cuda.max_memory_allocated during model build + timed steps "
            "(GB = 1e9 bytes, includes the on-device image pool)"
            if cuda
            else "peak_mem_gb is CUDA-only (null); peak_rss_delta_gb = peak process RSS "
            "above the RSS before the model was built, sampled every 5 ms from "
            "/proc/self/statm (GB = 1e9 bytes); a lower bound: memory freed by an earlier "
            "measurement and reused by the allocator does not show"
        ),
        "seed_loop_view_passes_per_s": seed_rate,
        "seed_loop": {
            "network": f"torchvision {sizes.ssl_encoder} + gated 4-stage fusion + SimCLR head, "
            "NT-Xent τ 0.07, SGD 0.1, two separate forward passes, fp32",
            "data": "PIL decode + per-image torchvision views (Resize → RandomResizedCrop 0.2–1 → "
            "ColorJitter p0.8 → RandomGrayscale 0.2 → GaussianBlur p0.5 → HFlip → "
            "ToTensor → Normalize) in DataLoader workers",
            "workers": workers,
            "batch": sizes.batch,
            "view_size": sizes.view_size,
            "error": seed_error,
        },
        "finetune_steps_per_s": {k: v["steps_per_s"] for k, v in finetune["per_shots"].items()},
        "finetune": finetune,
        "eval_images_per_s": at[main.name]["eval"]["images_per_s"],
        "eval": at[main.name]["eval"],
        "precision_compare": compare,
        "precision_ratios": _ratios(compare),
        "finetune_epochs_per_s_aggregate": aggregate["per_n"],
        "aggregate": aggregate,
        "ratios": {
            "engine_over_seed_matssl": (methods.get(REFERENCE_METHOD) or {}).get("ratio_to_seed"),
            "engine_over_seed": {m: e["ratio_to_seed"] for m, e in methods.items()},
            "engine_over_ceiling": {m: e["ratio_to_ceiling"] for m, e in methods.items()},
        },
        "notes": notes + _standard_notes(device, sizes),
    }
    record["versions"] = collect_versions()
    record["git_commit"] = git_commit()
    return record


PAIR = ("fp32", "bf16")


def _engine_entry(
    method_cls: type,
    ctx: EncoderContext,
    pool: ImagePool,
    sizes: PerfSizes,
    opts: PerfOptions,
    precision: Precision,
) -> dict[str, Any]:
    ctx = dataclasses.replace(ctx, precision=precision.name)
    try:
        return measure_engine(method_cls, ctx, pool, sizes, opts.compile, precision)
    except Exception as exc:  # one broken method must not hide the others
        release(ctx.device)
        return {
            "view_passes_per_s": None,
            "peak_mem_gb": None,
            "peak_rss_delta_gb": None,
            "precision": precision.name,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=3),
        }


def _eval_entry(
    card, images: list, device: torch.device, sizes: PerfSizes, precision: Precision
) -> dict[str, Any]:
    try:
        return measure_eval(card, images, device, sizes, precision)
    except Exception as exc:  # recorded, the other figures still stand
        release(device)
        return {"images_per_s": None, "error": f"{type(exc).__name__}: {exc}"}


def _compare_entry(at: dict[str, Any]) -> dict[str, Any]:
    """The figures ``precision_compare`` keeps for one precision."""
    return {
        "ceiling_imgs_per_s": at["ceiling"]["imgs_per_s"],
        "methods": {
            name: {"view_passes_per_s": e["view_passes_per_s"]} for name, e in at["methods"].items()
        },
        "finetune_steps_per_s": {
            k: v["steps_per_s"] for k, v in at["finetune"]["per_shots"].items()
        },
        "eval_images_per_s": at["eval"]["images_per_s"],
    }


def _ratio(bf16: float | None, fp32: float | None) -> float | None:
    return bf16 / fp32 if bf16 and fp32 else None


def _ratios(compare: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """bf16 ÷ fp32 of every figure in ``precision_compare`` (None without both)."""
    if set(compare) != set(PAIR):
        return None
    low, full = compare["bf16"], compare["fp32"]
    return {
        "ceiling_imgs_per_s": _ratio(low["ceiling_imgs_per_s"], full["ceiling_imgs_per_s"]),
        "methods": {
            m: _ratio(e["view_passes_per_s"], full["methods"][m]["view_passes_per_s"])
            for m, e in low["methods"].items()
        },
        "finetune_steps_per_s": {
            k: _ratio(v, full["finetune_steps_per_s"][k])
            for k, v in low["finetune_steps_per_s"].items()
        },
        "eval_images_per_s": _ratio(low["eval_images_per_s"], full["eval_images_per_s"]),
    }


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
        notes.append(
            "CPU run: CUDA-only figures (peak_mem_gb, cuda) are null; figures depend on "
            "the load of the machine (see load_average)"
        )
    return notes
