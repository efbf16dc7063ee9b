"""One benchmark run: method → encoder weights → few-shot fine-tune → evaluation → results store.

``RunSpec`` names a grid point (method, dataset, split, shots, draw, profile...). ``run_one``
executes it against a ``RunEnv`` (data root, store, device, caches) and records it; a grid point
whose config hash already succeeded is skipped unless ``force``. Sweeps call ``run_one`` per trial.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.core.devices import device_name, resolve_device
from bench.core.errors import BenchError
from bench.core.paths import default_cache_dir
from bench.core.provenance import collect_versions, config_hash, git_commit
from bench.data.cards import DatasetCard, load_card
from bench.data.images import LabeledImage
from bench.data.protocol import Partition, draw_shots, parse_shots, partition
from bench.data.sources import load_labeled, resolve_data_root, source_for
from bench.finetune.config import FinetuneConfig
from bench.finetune.metrics import Summary
from bench.finetune.train import FinetuneResult, finetune
from bench.models.scale import resolve_scale
from bench.models.segmenter import build_segmenter
from bench.profiles import finetune_config, get_profile
from bench.results.store import MetricRow, NewRun, ResultStore
from bench.ssl.engine import encoder_for
from bench.ssl.method import EncoderContext, Method
from bench.ssl.registry import get_method

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    """One grid point."""

    method: str
    dataset: str = "metaldam"
    split: str | None = None
    shots: str = "1"
    draw: int = 0
    profile: str = "quick"
    init: str | None = None
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    """Method parameters; ``finetune.<field>`` keys are fine-tuning settings (as tuned)."""
    finetune: dict[str, Any] = field(default_factory=dict)
    tuned: int | None = None
    """Trials of the ``bench tune`` study the parameters come from (None: not tuned)."""


@dataclass
class RunEnv:
    """Where runs read data, write results and compute."""

    data_root: Path
    store: ResultStore | None
    device: torch.device
    cache_dir: Path
    force: bool = False
    compile: str = "off"
    _datasets: dict[tuple[str, str], LoadedSplit] = field(default_factory=dict)

    def split_data(self, card: DatasetCard, split: str) -> LoadedSplit:
        key = (card.full_name, split)
        if key not in self._datasets:
            part = partition(card, self.data_root, split)
            self._datasets[key] = LoadedSplit(
                part,
                load_labeled(card, self.data_root, part.val),
                load_labeled(card, self.data_root, part.test),
            )
        return self._datasets[key]


@dataclass
class LoadedSplit:
    partition: Partition
    val: list[LabeledImage]
    test: list[LabeledImage]


@dataclass
class RunOutcome:
    spec: RunSpec
    status: str
    config_hash: str
    run_id: int | None
    scores: dict[str, float]
    error: str | None = None


@dataclass
class PreparedRun:
    spec: RunSpec
    card: DatasetCard
    method: Method
    cfg: FinetuneConfig
    init: str
    split: str
    shots: list[LabeledImage]
    data: LoadedSplit
    ctx: EncoderContext
    config: dict[str, Any]
    hash: str


def prepare(spec: RunSpec, env: RunEnv) -> PreparedRun:
    """Resolve names, draw the shots and build the config whose hash identifies the run."""
    card = load_card(spec.dataset)
    profile = get_profile(spec.profile)
    params = {k: v for k, v in spec.params.items() if not k.startswith("finetune.")}
    tuned_finetune = _finetune_params(profile.finetune, spec.params)
    method = get_method(spec.method)(params)
    cfg = finetune_config(profile, **{**tuned_finetune, **spec.finetune})
    init = method.init_for(spec.init or profile.default_init)
    split = source_for(card, env.data_root).split_name(spec.split)
    data = env.split_data(card, split)
    shots_count = parse_shots(spec.shots)
    shots_label = "all" if shots_count is None else str(shots_count)
    # Keyed by the base card, so label variants (ebc1, ebc1:binary) draw the same images.
    stems = draw_shots(data.partition.pool, shots_count, spec.draw, f"{card.name}/{split}")
    shots = load_labeled(card, env.data_root, stems)
    seed = spec.seed * 1000 + spec.draw
    scale = resolve_scale(card, cfg.scale)
    ctx = EncoderContext(
        card=card,
        data_root=env.data_root,
        encoder=cfg.encoder,
        init=init,
        profile=profile.name,
        seed=spec.seed,
        device=env.device,
        cache_dir=env.cache_dir,
        shots=shots if method.uses_labels else [],
        draw=spec.draw,
        compile=env.compile,
        split=split,
        scale=scale,
        arch=cfg.arch,
    )
    config = {
        "protocol_version": PROTOCOL_VERSION,
        "method": method.name,
        "params": method.params_dict(),
        "dataset": card.full_name,
        "split": split,
        "shots": shots_label,
        "draw": spec.draw,
        "seed": seed,
        "profile": profile.name,
        "init": init,
        "scale": scale.describe(),
        "finetune": dataclasses.asdict(cfg),
        "pretrain": method.pretrain_config(ctx),
    }
    if spec.tuned:
        config["tuned"] = spec.tuned
    return PreparedRun(
        spec, card, method, cfg, init, split, shots, data, ctx, config, config_hash(config)
    )


def _finetune_params(base: FinetuneConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The ``finetune.<field>`` entries of ``params``, typed like ``base``'s fields."""
    out = {}
    for key, value in params.items():
        if not key.startswith("finetune."):
            continue
        name = key.removeprefix("finetune.")
        if not hasattr(base, name):
            raise BenchError(f"parameter {key}: fine-tuning has no setting '{name}'")
        kind = type(getattr(base, name))
        try:
            out[name] = value if isinstance(value, kind) else kind(value)
        except (TypeError, ValueError):
            raise BenchError(f"parameter {key}={value!r} is not a valid {kind.__name__}") from None
    return out


def run_one(
    spec: RunSpec, env: RunEnv, on_eval: Callable[[int, float], None] | None = None
) -> RunOutcome:
    """Execute one grid point and store it; skipped when its config already succeeded.

    ``on_eval(step, val_score)`` is passed to fine-tuning (hyperparameter search prunes with it).
    """
    assert env.store is not None, "run_one needs a results store"
    run = prepare(spec, env)
    if not env.force:
        done = env.store.succeeded(run.hash)
        if done is not None:
            return RunOutcome(
                spec, "skipped", run.hash, done.id, _stored_scores(env.store, done.id)
            )
    run_id = env.store.start_run(_new_run(run, env))
    started = time.time()
    try:
        encoder = encoder_for(run.method, run.ctx)
        pretrain_seconds = time.time() - started
        torch.manual_seed(run.config["seed"])
        model = build_segmenter(
            run.cfg.arch, run.cfg.encoder, run.card.num_classes, encoder.weights
        )
        label = f"{run.method.name} {run.card.full_name} {spec.shots}-shot draw {spec.draw}"
        result = finetune(
            model,
            run.shots,
            run.data.val,
            run.data.test,
            run.card,
            run.cfg,
            env.device,
            run.config["seed"],
            label,
            on_eval=on_eval,
            compile=env.compile,
            pretrained=encoder.weights.parts if encoder.weights else (),
        )
    except BenchError as exc:
        env.store.fail_run(run_id, str(exc))
        raise
    except BaseException as exc:
        env.store.fail_run(run_id, "".join(traceback.format_exception(exc)))
        raise
    rows = metric_rows(result, run.card)
    summary = {
        **encoder.info,
        "predictions": save_predictions(
            result.selected.predictions, env.cache_dir / "predictions" / run.hash
        ),
        "selected_step": result.selected.step,
        "finetune_compiled": result.compiled,
        "losses": result.losses,
        "evals": [
            {
                "step": e.step,
                "val": e.val_score,
                **{f"test/{k}": v.score for k, v in e.test.items()},
            }
            for e in result.evals
        ],
        "seconds": {"total": time.time() - started, "encoder": pretrain_seconds},
        "absent_classes": result.selected.test["honest"].summary.absent,
    }
    env.store.finish_run(run_id, rows, summary, replace=env.force)
    return RunOutcome(spec, "succeeded", run.hash, run_id, scores_of(result))


def save_predictions(predictions: dict[str, np.ndarray], folder: Path) -> dict[str, str]:
    """Write class-id PNGs of the selected model's test predictions; returns stem → path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem, pred in predictions.items():
        path = folder / f"{stem}.png"
        Image.fromarray(pred).save(path)
        paths[stem] = str(path.resolve())
    return paths


def _new_run(run: PreparedRun, env: RunEnv) -> NewRun:
    pretrain = run.config["pretrain"]
    return NewRun(
        config_hash=run.hash,
        method=run.method.name,
        dataset=run.card.full_name,
        split=run.split,
        shots=len(run.shots),
        shots_label=run.config["shots"],
        draw=run.spec.draw,
        seed=run.config["seed"],
        profile=run.spec.profile,
        init=run.init,
        encoder=run.cfg.encoder,
        arch=run.cfg.arch,
        config=run.config,
        images=[s.stem for s in run.shots],
        pretrain_hash=config_hash(pretrain) if pretrain else None,
        versions=collect_versions(),
        device=device_name(env.device),
        git_commit=git_commit(),
        host=socket.gethostname(),
    )


def scores_of(result: FinetuneResult) -> dict[str, float]:
    """Headline numbers: each protocol at the validation-selected step, plus the honest oracle."""
    selected = result.selected
    scores = {name: r.score for name, r in selected.test.items()}
    scores["oracle"] = result.oracle("honest").test["honest"].score
    scores["val"] = selected.val_score
    return scores


def metric_rows(result: FinetuneResult, card: DatasetCard) -> list[MetricRow]:
    rows: list[MetricRow] = []
    selected = result.selected
    rows += _summary_rows("honest", "val", "val", selected.val_score, selected.val, selected.step)
    for name, res in selected.test.items():
        rows += _summary_rows(name, "val", "test", res.score, res.summary, selected.step)
        oracle = result.oracle(name)
        ores = oracle.test[name]
        rows += _summary_rows(name, "oracle", "test", ores.score, ores.summary, oracle.step)
    return rows


def _summary_rows(
    protocol: str, selection: str, part: str, score: float, summary: Summary, step: int
) -> list[MetricRow]:
    def row(metric: str, value: float, class_id: int | None = None) -> MetricRow:
        return MetricRow(
            protocol=protocol,
            selection=selection,
            split_part=part,
            metric=metric,
            value=value,
            class_id=class_id,
        )

    rows = [
        row("score", score),
        row("miou", summary.miou),
        row("mdice_fg", summary.mdice_fg),
        row("pixel_acc", summary.pixel_acc),
        row("step", float(step)),
    ]
    rows += [row("iou", v, c) for c, v in enumerate(summary.iou)]
    rows += [row("dice", v, c) for c, v in enumerate(summary.dice)]
    return rows


def _stored_scores(store: ResultStore, run_id: int) -> dict[str, float]:
    frame = store.metrics_frame(run_id=run_id)
    test = frame[(frame.metric == "score") & (frame.split_part == "test")]
    scores = {r.protocol: r.value for r in test[test.selection == "val"].itertuples()}
    oracle = test[(test.selection == "oracle") & (test.protocol == "honest")]
    if len(oracle):
        scores["oracle"] = float(oracle.value.iloc[0])
    val = frame[(frame.metric == "score") & (frame.split_part == "val")]
    if len(val):
        scores["val"] = float(val.value.iloc[0])
    return scores


def make_env(
    data_root: str | None,
    store_url: str | None,
    device: str,
    cache_dir: str | None,
    force: bool = False,
    compile: str = "off",
    with_store: bool = True,
) -> RunEnv:
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if (
        compile != "off"
    ):  # compiled kernels persist beside the pretrainings, for later runs and workers
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((cache / "inductor").resolve()))
    return RunEnv(
        data_root=resolve_data_root(data_root),
        store=ResultStore(store_url) if with_store else None,
        device=resolve_device(device),
        cache_dir=cache,
        force=force,
        compile=compile,
    )
