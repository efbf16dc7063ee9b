"""Concurrent seed-style 1-shot fine-tunes, one spawned process each: total epochs/s per N.

An epoch is one full-batch train step on the shot resized to 256² plus predicting the validation
images at 256² (the MatSSL seed's fine-tuning loop); timing starts at a barrier after every
process has built its model and warmed up.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue as queue_mod
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.core.precision import Precision, resolve_precision
from bench.data.cards import DatasetCard, load_card
from bench.data.sources import load_labeled
from bench.finetune.inference import forward_logits, predict, resize_mask
from bench.finetune.losses import make_loss
from bench.finetune.metrics import ConfusionMatrix
from bench.models.inputs import normalize_uint8
from bench.models.segmenter import build_segmenter
from bench.perf.probes import sync
from bench.perf.sizes import PerfSizes


def _fine_tune_process(spec: dict[str, Any], barrier, results) -> None:
    """One seed-style 1-shot fine-tune in its own process; reports (rank, epochs, seconds, error)
    to ``results``."""
    rank = spec["rank"]
    try:
        torch.set_num_threads(spec["threads"])
        device = torch.device(spec["device"])
        size = spec["size"]
        torch.manual_seed(rank)
        precision = resolve_precision(spec["precision"], device)
        model = build_segmenter(spec["arch"], spec["encoder"], spec["num_classes"]).to(device)
        model = precision.model(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_fn = make_loss("dice", spec["num_classes"])
        card = load_card(spec["dataset"])
        root = Path(spec["data_root"])
        shot = load_labeled(card, root, [spec["shot"]])[0]
        image, mask = shot.image, shot.mask
        x = F.interpolate(
            normalize_uint8(torch.from_numpy(image)[None].to(device)),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )
        y = F.interpolate(
            torch.from_numpy(mask)[None, None].float().to(device), size=(size, size), mode="nearest"
        )[:, 0].long()
        val = [
            (v.image, resize_mask(v.mask, (size, size)))
            for v in load_labeled(card, root, spec["val"])
        ]

        def epoch() -> None:
            model.train()
            loss = loss_fn(forward_logits(model, x, precision), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
            model.eval()
            cm = ConfusionMatrix(spec["num_classes"])
            for im, m in val:
                cm.update(predict(model, im, device, size=(size, size), precision=precision), m)

        for _ in range(spec["warmup"]):
            epoch()
        sync(device)
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
    except BaseException as exc:  # reported to the parent, which decides
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put((rank, 0, 0.0, f"{type(exc).__name__}: {exc}"))


def measure_aggregate(
    card: DatasetCard,
    data_root: Path,
    shot: str,
    val: list[str],
    device: torch.device,
    sizes: PerfSizes,
    total_threads: int,
    precision: Precision,
) -> dict[str, Any]:
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
            spec = {
                "rank": rank,
                "threads": threads,
                "device": str(device),
                "size": sizes.agg_size,
                "arch": sizes.ft_arch,
                "encoder": sizes.ft_encoder,
                "num_classes": card.num_classes,
                "dataset": card.full_name,
                "data_root": str(data_root),
                "shot": shot,
                "val": val,
                "warmup": sizes.agg_warmup,
                "seconds": sizes.agg_seconds,
                "precision": precision.name,
            }
            proc = ctx.Process(
                target=_fine_tune_process, args=(spec, barrier, results), daemon=True
            )
            proc.start()
            procs.append(proc)
        reports, errors = _collect(procs, results, n, timeout=900 + sizes.agg_seconds)
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
        if errors or len(reports) < n:
            per_n[str(n)] = None
            detail[str(n)] = {
                "error": "; ".join(errors) or f"only {len(reports)} of {n} processes reported",
                "threads_per_process": threads,
            }
            continue
        rates = [count / seconds for _, count, seconds, _ in reports]
        per_n[str(n)] = sum(rates)
        detail[str(n)] = {
            "per_process_epochs_per_s": rates,
            "epochs": [count for _, count, _, _ in reports],
            "threads_per_process": threads,
        }
    return {
        "per_n": per_n,
        "detail": detail,
        "epoch": (
            f"one full-batch train step on the 1 shot resized to {sizes.agg_size}² (Dice, "
            f"Adam 1e-4) + predicting {len(val)} validation images at "
            f"{sizes.agg_size}² (bench.finetune.inference.predict) into a confusion matrix"
        ),
        "arch": sizes.ft_arch,
        "encoder": sizes.ft_encoder,
        "precision": precision.name,
        "val_images": len(val),
        "shot": shot,
        "warmup_epochs": sizes.agg_warmup,
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
