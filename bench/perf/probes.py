"""Timing and memory probes: seconds of timed steps after a warm-up, peak memory of a block."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[int], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds taken by ``steps`` calls of ``step(i)`` after ``warmup`` untimed ones."""
    for i in range(warmup):
        step(i)
    sync(device)
    started = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync(device)
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

    def __enter__(self) -> MemoryPeak:
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


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
