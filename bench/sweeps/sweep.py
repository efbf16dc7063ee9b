"""Sweeps: a grid of runs (methods × datasets × shots × draws) as ONE study of enqueued trials.

Each grid point is a trial enqueued with ``study.enqueue_trial`` whose user attributes hold the
``RunSpec`` (``spec``), a stable ``grid_key`` (hash of the spec) and a readable ``label``. Workers
(``bench.sweeps.workers.work``) claim waiting trials; each trial is one ``run_one`` call, whose
value is the validation score of the selected model. Re-running the same sweep enqueues only grid
points with no trial that is waiting, running or complete (a grid point whose trials all failed is
enqueued again); ``run_one`` itself skips configs that already succeeded in the results store, and
the store never holds two successes for one config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from bench.core.errors import BenchError
from bench.sweeps.studies import GRID_KEY, LABEL, OpenedStorage, StaleHook, storage_lock

if TYPE_CHECKING:
    from bench.results.store import ResultStore
    from bench.runner import RunEnv, RunSpec

SPEC = "spec"
CONFIG_HASH = "config_hash"
STALL_ENV = "BENCH_WORKER_STALL"
"""Seconds a worker sleeps after each validation inside a run (to test killing a worker mid-run)."""
METRIC = "validation mIoU (honest)"
"""What a sweep trial's value is: the selected model's validation score."""
OPEN_STATES = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


@dataclass(frozen=True)
class Grid:
    """What a sweep covers; ``params`` maps (method, dataset) to that cell's method parameters."""

    methods: list[str]
    datasets: list[str]
    shots: list[str]
    draws: int
    profile: str
    init: str | None = None
    split: str | None = None
    seed: int = 0
    params: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def expand_methods(text: str) -> list[str]:
    """``all`` → every registered method; else the comma list, each checked."""
    from bench.ssl.registry import get_method, method_names

    names = method_names() if text.strip() == "all" else split_list(text)
    if not names:
        raise BenchError("--methods names no method")
    for name in names:
        get_method(name)
    return list(dict.fromkeys(names))


def split_params(
    methods: list[str], params: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``--param`` values per method: each method gets the keys it accepts (e.g. ``epochs`` goes to
    the SSL methods, not to the baselines). A key no method accepts is an error."""
    from bench.ssl.registry import get_method

    accepted: dict[str, dict[str, Any]] = {m: {} for m in methods}
    takers: dict[str, list[str]] = {key: [] for key in params}
    for method in methods:
        cls = get_method(method)
        for key, value in params.items():
            try:
                cls({key: value})
            except BenchError as exc:
                if "has no parameter" in str(exc):
                    continue
                raise
            accepted[method][key] = value
            takers[key].append(method)
    unused = [key for key, who in takers.items() if not who]
    if unused:
        get_method(methods[0])({key: params[key] for key in unused})  # raises the usual message
    notes = [
        f"note: --param {key} applies to {', '.join(who)} only"
        for key, who in takers.items()
        if len(who) < len(methods)
    ]
    return accepted, notes


def expand_grid(grid: Grid, data_root: str | None) -> tuple[list[RunSpec], list[str]]:
    """The grid's run specs, and notes on the points skipped (more shots than a dataset's pool).

    Order: draws, then shots, then datasets, then methods innermost, so that the first trials of
    several workers pretrain different methods instead of waiting on one another's cache lock.
    """
    from bench.data.cards import load_card
    from bench.data.protocol import parse_shots, partition
    from bench.data.sources import resolve_data_root
    from bench.runner import RunSpec
    from bench.ssl.registry import get_method

    if grid.draws < 1:
        raise BenchError("--draws must be ≥ 1")
    if not grid.shots:
        raise BenchError("--shots names no shots level")
    levels = [(s, parse_shots(s)) for s in grid.shots]
    pools: dict[str, int] = {}
    for dataset in grid.datasets:
        card = load_card(dataset)
        pools[dataset] = len(partition(card, resolve_data_root(data_root), grid.split).pool)
    for method in grid.methods:  # unknown parameters fail here, not in every trial
        for dataset in grid.datasets:
            get_method(method)(
                {
                    k: v
                    for k, v in grid.params.get((method, dataset), {}).items()
                    if not k.startswith("finetune.")  # fine-tuning settings, for the runner
                }
            )
    notes = [
        f"note: skipping {dataset} {label}-shot (all methods, all draws): its pool has only "
        f"{pools[dataset]} images for shots"
        for label, n in levels
        for dataset in grid.datasets
        if n is not None and n > pools[dataset]
    ]
    specs = [
        RunSpec(
            method=method,
            dataset=dataset,
            split=grid.split,
            shots=label,
            draw=draw,
            profile=grid.profile,
            init=grid.init,
            seed=grid.seed,
            params=dict(grid.params.get((method, dataset), {})),
            finetune=dict(grid.finetune),
        )
        for draw in range(grid.draws)
        for label, n in levels
        for dataset in grid.datasets
        if n is None or n <= pools[dataset]
        for method in grid.methods
    ]
    return specs, notes


def spec_dict(spec: RunSpec) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str))


def spec_from_dict(data: dict[str, Any]) -> RunSpec:
    from bench.runner import RunSpec

    return RunSpec(**data)


def grid_key(spec: RunSpec) -> str:
    canonical = json.dumps(spec_dict(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def spec_label(spec: RunSpec) -> str:
    params = "".join(f" {k}={v}" for k, v in sorted(spec.params.items()))
    return (
        f"{spec.method} {spec.dataset} {spec.shots}-shot draw {spec.draw} ({spec.profile}{params})"
    )


@dataclass
class EnqueueReport:
    added: int = 0
    done: int = 0
    pending: int = 0
    retried: int = 0


def enqueue(study: optuna.Study, specs: list[RunSpec], opened: OpenedStorage) -> EnqueueReport:
    """Enqueue the grid points that have no waiting, running or complete trial yet, holding the
    storage's enqueue lock: two sweeps enqueueing the same grid at once add each point once."""
    with storage_lock(opened):
        return _enqueue(study, specs)


def _enqueue(study: optuna.Study, specs: list[RunSpec]) -> EnqueueReport:
    states: dict[str, set[TrialState]] = defaultdict(set)
    for trial in study.get_trials(deepcopy=False):
        key = trial.user_attrs.get(GRID_KEY)
        if key is not None:
            states[key].add(trial.state)
    report = EnqueueReport()
    for spec in specs:
        key = grid_key(spec)
        seen = states.get(key, set())
        if TrialState.COMPLETE in seen:
            report.done += 1
            continue
        if seen & {TrialState.WAITING, TrialState.RUNNING}:
            report.pending += 1
            continue
        if seen:
            report.retried += 1
        study.enqueue_trial(
            {},
            user_attrs={
                GRID_KEY: key,
                LABEL: spec_label(spec),
                SPEC: spec_dict(spec),
                "method": spec.method,
                "dataset": spec.dataset,
                "shots": spec.shots,
                "draw": spec.draw,
                "profile": spec.profile,
            },
        )
        states[key].add(TrialState.WAITING)
        report.added += 1
    return report


def sweep_objective(env: RunEnv):
    """The worker's objective: run the trial's grid point; its value is the validation score."""
    from bench.results.store import DuplicateResult
    from bench.runner import prepare, run_one

    stall = float(os.environ.get(STALL_ENV) or 0)

    def on_eval(step: int, score: float) -> None:
        if stall:
            time.sleep(stall)

    def objective(trial: optuna.Trial) -> float:
        data = trial.user_attrs.get(SPEC)
        if data is None:
            raise BenchError(
                f"trial {trial.number} is not a sweep grid point (no '{SPEC}' attribute)"
            )
        import torch

        spec = spec_from_dict(data)
        trial.set_user_attr(CONFIG_HASH, prepare(spec, env).hash)
        trial.set_user_attr("metric", METRIC)
        trial.set_user_attr("threads", torch.get_num_threads())
        try:
            outcome = run_one(spec, env, on_eval=on_eval)
        except DuplicateResult:  # the same config succeeded meanwhile (a retried copy): keep that
            outcome = run_one(spec, env)
        trial.set_user_attr("run_status", outcome.status)
        trial.set_user_attr("run_id", outcome.run_id)
        value = outcome.scores.get("val", math.nan)
        return value if math.isfinite(value) else -math.inf

    return objective


def interrupted_runs_hook(store: ResultStore) -> StaleHook:
    """A stale-trial hook: the results-store rows its lost worker left 'running' become failed."""

    def hook(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        config = trial.user_attrs.get(CONFIG_HASH)
        if not config:
            return
        worker = trial.user_attrs.get("worker", "?")
        for run in store.runs(config_hash=config, status="running"):
            store.fail_run(
                run.id,
                f"interrupted: worker {worker} stopped responding (study "
                f"'{study.study_name}' trial {trial.number} failed as stale)",
            )

    return hook
