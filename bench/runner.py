"""One benchmark run: method → encoder weights → few-shot fine-tune and frozen-encoder probe →
evaluation → results store.

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
from bench.core.precision import Precision, resolve_precision
from bench.core.provenance import collect_versions, config_hash, git_commit
from bench.data.cards import DatasetCard, load_card
from bench.data.images import LabeledImage
from bench.data.pool import DEFAULT_POOL, POOL_MODES, labeled_fingerprint
from bench.data.protocol import Partition, draw_shots, parse_shots, partition
from bench.data.sources import load_labeled, resolve_data_root, source_for
from bench.finetune.config import FinetuneConfig
from bench.finetune.metrics import Summary
from bench.finetune.probe import ProbeConfig, probe
from bench.finetune.train import FinetuneResult, finetune
from bench.models.encoders import build_encoder, load_strict
from bench.models.scale import resolve_scale
from bench.models.segmenter import PretrainedWeights, build_segmenter
from bench.profiles import finetune_config, get_profile
from bench.results.store import DuplicateResult, MetricRow, NewRun, ResultStore
from bench.ssl.engine import encoder_for
from bench.ssl.method import EncoderContext, Method
from bench.ssl.registry import get_method

PROTOCOL_VERSION = 2
"""2: honest SSL pools per split (near-duplicates of evaluation images left out), data contents in
the config hash."""

MODES = ("finetune", "probe")
"""Evaluation modes: ``finetune`` trains every weight from the encoder's starting point; ``probe``
freezes the encoder and trains a linear head on its features (``bench.finetune.probe``)."""


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
    modes: tuple[str, ...] = MODES
    """Evaluation modes to run on the same encoder (see ``MODES``)."""
    pool: str = DEFAULT_POOL
    """SSL pool mode: ``honest`` or ``transductive`` (``bench.data.pool``)."""
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
    precision: Precision | None = None
    """The resolved ``--precision`` (``make_env``); None: fp32."""
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

    def __post_init__(self) -> None:
        if self.precision is None:
            self.precision = resolve_precision("fp32", self.device)


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
    """Fine-tuning's headline scores (``scores_of``); empty when the run did not fine-tune."""
    error: str | None = None
    probe: dict[str, float] = field(default_factory=dict)
    """The probe's headline scores, same keys; empty when the run did not probe."""


@dataclass
class PreparedRun:
    spec: RunSpec
    card: DatasetCard
    method: Method
    cfg: FinetuneConfig
    probe_cfg: ProbeConfig
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
    if spec.pool not in POOL_MODES:
        raise BenchError(f"unknown pool mode '{spec.pool}'; modes: {', '.join(POOL_MODES)}")
    profile = get_profile(spec.profile)
    modes = check_modes(spec.modes)
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
        pool=spec.pool,
        precision=_precision(env).name,
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
        "precision": _precision(env).name,
        "finetune": dataclasses.asdict(cfg),
        "pretrain": method.pretrain_config(ctx),
        "modes": list(modes),
        "pool": spec.pool,
        "data": labeled_fingerprint(
            card, env.data_root, [*stems, *data.partition.val, *data.partition.test]
        ),
    }
    if "probe" in modes:
        config["probe"] = dataclasses.asdict(profile.probe)
    if spec.tuned:
        config["tuned"] = spec.tuned
    return PreparedRun(
        spec,
        card,
        method,
        cfg,
        profile.probe,
        init,
        split,
        shots,
        data,
        ctx,
        config,
        config_hash(config),
    )


def check_modes(modes: tuple[str, ...]) -> tuple[str, ...]:
    """``modes`` in the canonical order; an empty or unknown mode is a BenchError."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        raise BenchError(
            f"unknown evaluation mode(s) {unknown or '(none given)'}; "
            f"choose from {', '.join(MODES)}"
        )
    return tuple(m for m in MODES if m in modes)


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
                spec,
                "skipped",
                run.hash,
                done.id,
                _stored_scores(env.store, done.id, "finetune"),
                probe=_stored_scores(env.store, done.id, "probe"),
            )
    run_id = env.store.start_run(_new_run(run, env))
    started = time.time()
    results: dict[str, FinetuneResult] = {}
    seconds: dict[str, float] = {}
    try:  # every error from here on marks the run failed with its reason
        encoder = encoder_for(run.method, run.ctx)
        seconds["encoder"] = time.time() - started
        label = f"{run.method.name} {run.card.full_name} {spec.shots}-shot draw {spec.draw}"
        for mode in run.config["modes"]:
            began = time.time()
            if mode == "finetune":
                results[mode] = finetune_prepared(run, env, encoder.weights, label, on_eval)
            else:
                results[mode] = _probe(run, env, encoder.weights, f"{label} probe")
            seconds[mode] = time.time() - began
        rows = [row for mode, result in results.items() for row in metric_rows(result, mode)]
        for mode, result in results.items():  # each mode's stages: training steps, evaluations
            seconds |= {f"{mode}_{stage}": t for stage, t in result.seconds.items()}
        seconds["total"] = time.time() - started
        summary: dict[str, Any] = {
            **encoder.info,
            "seconds": seconds,
            "threads": torch.get_num_threads(),
            "precision": _precision(env).record(),
        }
        tuned = results.get("finetune")
        if tuned is not None:
            summary |= {
                "predictions": save_predictions(
                    tuned.selected.predictions, env.cache_dir / "predictions" / run.hash
                ),
                "finetune_compiled": tuned.compiled,
                **_training_record(tuned),
            }
        if "probe" in results:
            summary["probe"] = _training_record(results["probe"])
        first = results[run.config["modes"][0]]
        summary["absent_classes"] = first.selected.test["honest"].summary.absent
        env.store.finish_run(run_id, rows, summary, replace=env.force)
    except DuplicateResult:
        raise  # already marked failed as a duplicate
    except BenchError as exc:
        env.store.fail_run(run_id, str(exc))
        raise
    except BaseException as exc:
        env.store.fail_run(run_id, "".join(traceback.format_exception(exc)))
        raise
    return RunOutcome(
        spec,
        "succeeded",
        run.hash,
        run_id,
        scores_of(tuned) if tuned is not None else {},
        probe=scores_of(results["probe"]) if "probe" in results else {},
    )


def finetune_prepared(
    run: PreparedRun,
    env: RunEnv,
    weights: PretrainedWeights | None,
    label: str,
    on_eval: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """The fine-tuning mode of a prepared run from ``weights`` (None: the baseline's own init)."""
    torch.manual_seed(run.config["seed"])
    model = build_segmenter(run.cfg.arch, run.cfg.encoder, run.card.num_classes, weights)
    return finetune(
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
        pretrained=weights.parts if weights else (),
        precision=_precision(env),
    )


def _probe(
    run: PreparedRun, env: RunEnv, weights: PretrainedWeights | None, label: str
) -> FinetuneResult:
    """The frozen-encoder probe on the same starting encoder (its decoder, if any, is unused)."""
    torch.manual_seed(run.config["seed"])
    encoder = build_encoder(run.cfg.encoder)
    if weights is not None:
        load_strict(encoder, weights.encoder, f"{run.cfg.encoder} encoder")
    return probe(
        encoder,
        run.shots,
        run.data.val,
        run.data.test,
        run.card,
        run.cfg.scale,
        run.probe_cfg,
        env.device,
        run.config["seed"],
        label,
        precision=_precision(env),
    )


def _training_record(result: FinetuneResult) -> dict[str, Any]:
    """What the run record keeps of one mode's training: losses, evaluations, the selected step."""
    return {
        "selected_step": result.selected.step,
        "losses": result.losses,
        "evals": [
            {
                "step": e.step,
                "val": e.val_score,
                **{f"test/{k}": v.score for k, v in e.test.items()},
            }
            for e in result.evals
        ],
    }


def save_predictions(predictions: dict[str, np.ndarray], folder: Path) -> dict[str, str]:
    """Write class-id PNGs of the selected model's test predictions; returns stem → path."""
    paths = {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stem, pred in predictions.items():
            path = folder / f"{stem}.png"
            Image.fromarray(pred).save(path)
            paths[stem] = str(path.resolve())
    except OSError as exc:
        raise BenchError(
            f"cannot write predictions to folder {folder}: {exc.strerror or exc}"
        ) from exc
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
        pool=run.spec.pool,
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


def metric_rows(result: FinetuneResult, mode: str = "finetune") -> list[MetricRow]:
    """The store's rows of one evaluation mode: validation, and every protocol's test scores at
    the validation-selected step and (labelled oracle) at the best test step."""
    rows: list[MetricRow] = []
    selected = result.selected
    rows += _summary_rows(
        mode, "honest", "val", "val", selected.val_score, selected.val, selected.step
    )
    for name, res in selected.test.items():
        rows += _summary_rows(mode, name, "val", "test", res.score, res.summary, selected.step)
        oracle = result.oracle(name)
        ores = oracle.test[name]
        rows += _summary_rows(mode, name, "oracle", "test", ores.score, ores.summary, oracle.step)
    return rows


def _summary_rows(
    mode: str,
    protocol: str,
    selection: str,
    part: str,
    score: float,
    summary: Summary,
    step: int,
) -> list[MetricRow]:
    def row(metric: str, value: float, class_id: int | None = None) -> MetricRow:
        return MetricRow(
            protocol=protocol,
            selection=selection,
            split_part=part,
            metric=metric,
            value=value,
            class_id=class_id,
            mode=mode,
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


def _precision(env: RunEnv) -> Precision:
    assert env.precision is not None  # set in RunEnv.__post_init__
    return env.precision


def _stored_scores(store: ResultStore, run_id: int, mode: str) -> dict[str, float]:
    frame = store.metrics_frame(run_id=run_id, mode=mode)
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
    precision: str = "auto",
) -> RunEnv:
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if (
        compile != "off"
    ):  # compiled kernels persist beside the pretrainings, for later runs and workers
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((cache / "inductor").resolve()))
    store = ResultStore(store_url) if with_store else None
    if store is not None:
        store.fail_gone_runs()  # runs of this host left 'running' by a killed process
    resolved = resolve_device(device)
    return RunEnv(
        data_root=resolve_data_root(data_root),
        store=store,
        device=resolved,
        cache_dir=cache,
        force=force,
        compile=compile,
        precision=resolve_precision(precision, resolved),
    )
