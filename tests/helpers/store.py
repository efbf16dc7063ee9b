"""Build a results store by hand (no training) for the leaderboard, statistics and report tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core.provenance import config_hash
from bench.results.store import MetricRow, NewRun, ResultStore

PROTOCOLS = ("honest", "pscl-paper")


def add_run(
    store: ResultStore,
    method: str,
    score: float,
    *,
    dataset: str = "synthetic",
    split: str = "default",
    shots: str = "1",
    draw: int = 0,
    profile: str = "quick",
    seed: int = 0,
    oracle_gain: float = 0.02,
    iou: tuple[float, ...] | None = None,
    params: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    protocols: tuple[str, ...] = PROTOCOLS,
    pool: str = "honest",
    modes: tuple[str, ...] = ("finetune",),
    images: list[str] | None = None,
    tuned: int | None = None,
) -> int:
    """One succeeded run: ``score`` for every protocol (validation-selected), oracle = +gain.

    ``modes`` are the evaluation modes it has rows for (a probe scores ``score`` - 0.1);
    ``images`` its shot images (default one per draw).
    """
    config = {
        "method": method,
        "dataset": dataset,
        "split": split,
        "shots": shots,
        "draw": draw,
        "seed": seed,
        "profile": profile,
        "init": "random",
        "params": params or {},
        "finetune": {"steps": 4},
        "pretrain": None,
        "pool": pool,
        **({"tuned": tuned} if tuned else {}),
    }
    n_shots = 8 if shots == "all" else int(shots)
    run_id = store.start_run(
        NewRun(
            config_hash=config_hash(config),
            method=method,
            dataset=dataset,
            split=split,
            shots=n_shots,
            shots_label=shots,
            draw=draw,
            seed=seed,
            profile=profile,
            init="random",
            encoder="resnet18",
            arch="unet",
            config=config,
            images=images if images is not None else [f"train_{draw:03d}"],
            device="cpu",
            versions={"python": "3.11", "torch": "2.5.0"},
            git_commit="abc1234",
            host="testhost",
            pool=pool,
        )
    )
    iou = iou if iou is not None else (score + 0.1, score, score - 0.1)
    rows: list[MetricRow] = []
    for mode in modes:
        shift = 0.1 if mode == "probe" else 0.0
        for protocol in protocols:
            for selection, value in (("val", score), ("oracle", score + oracle_gain)):
                value -= shift
                rows += [
                    MetricRow(protocol, selection, "test", "score", value, mode=mode),
                    MetricRow(protocol, selection, "test", "miou", value, mode=mode),
                    MetricRow(protocol, selection, "test", "mdice_fg", value + 0.05, mode=mode),
                    MetricRow(protocol, selection, "test", "step", 4.0, mode=mode),
                ]
                for c, v in enumerate(iou):
                    v -= shift
                    dice = 2 * v / (1 + v)  # the Dice of a class whose IoU is v
                    rows.append(MetricRow(protocol, selection, "test", "iou", v, c, mode=mode))
                    rows.append(MetricRow(protocol, selection, "test", "dice", dice, c, mode=mode))
            rows.append(MetricRow(protocol, "val", "val", "score", score - 0.01, mode=mode))
    store.finish_run(run_id, rows, {"selected_step": 4, "losses": [1.0, 0.5], **(summary or {})})
    return run_id


def sqlite_store(folder: Path) -> ResultStore:
    return ResultStore(f"sqlite:///{folder / 'bench.sqlite'}")
