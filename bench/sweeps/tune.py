"""Hyperparameter search: Optuna TPE over a method's declared search space, pruned on validation.

A trial suggests values for the method's ``search_space(profile)`` (minus the keys fixed with
``--param``), runs ``draws`` draws of one shots level with them, and returns the MEAN VALIDATION
mIoU (``scores["val"]``, the honest mIoU of the validation-selected model): test scores are never
read. During fine-tuning, the running mean (finished draws' selected validation scores and the
current draw's best so far) is reported after each validation, at global step
``draw × steps + step``, and ``MedianPruner`` may stop the trial.

Tune runs go to their own results store (default ``tune.sqlite`` beside the main store), so the
leaderboard never sees them. The best parameters are written to
``<tuned dir>/<method>-<dataset>-<profile>.json`` (default ``results/tuned/``, beside the main
store) and ``resolve_params(..., source="best")`` reads them back for ``--params best``.
The first trial of a new study is the method's current defaults, so "best" is never worse than them.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from bench.core.errors import BenchError
from bench.sweeps.studies import LABEL, OpenedStorage, results_dir

if TYPE_CHECKING:
    from bench.runner import RunEnv
    from bench.ssl.method import Method, SearchDim

TUNED_DIR_ENV = "BENCH_TUNED_DIR"
METRIC = "mean validation mIoU (honest, model selected on validation) over the draws"


def tuned_dir(store_url: str | None = None) -> Path:
    """``$BENCH_TUNED_DIR``, else ``tuned/`` beside the main results store (``results/tuned``)."""
    return Path(os.environ.get(TUNED_DIR_ENV) or results_dir(store_url) / "tuned")


def tuned_path(method: str, dataset: str, profile: str, directory: Path | None = None) -> Path:
    slug = "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", part) for part in (method, dataset, profile))
    return (directory or tuned_dir()) / f"{slug}.json"


def default_tune_store(store_url: str | None = None) -> str:
    """``tune.sqlite`` beside the main results store: tune runs never reach the leaderboard."""
    return f"sqlite:///{results_dir(store_url) / 'tune.sqlite'}"


# --- Search space ------------------------------------------------------------------------------


def suggest(trial: optuna.Trial, name: str, dim: SearchDim) -> Any:
    """Ask the trial for ``name`` within ``dim``."""
    if dim.kind == "float":
        return trial.suggest_float(name, float(dim.low), float(dim.high), log=dim.log)
    if dim.kind == "int":
        return trial.suggest_int(
            name,
            int(dim.low),
            int(dim.high),
            log=dim.log,
            step=1 if dim.log else int(dim.step or 1),
        )
    if dim.kind == "choice":
        return trial.suggest_categorical(name, list(dim.choices))
    raise ValueError(f"unknown search dimension kind '{dim.kind}'")


def search_space(
    method_cls: type[Method], profile: str, fixed: dict[str, Any] | None = None
) -> dict[str, SearchDim]:
    """The method's search space at ``profile`` without the ``fixed`` keys; BenchError if empty."""
    space = {k: v for k, v in method_cls.search_space(profile).items() if k not in (fixed or {})}
    if not space:
        why = (
            "declares no search space"
            if not method_cls.search_space(profile)
            else "has every searched parameter fixed with --param"
        )
        raise BenchError(f"method '{method_cls.name}' {why}: nothing to tune")
    method_cls({k: _probe(d) for k, d in space.items()})  # every key must be a valid --param
    return space


def _probe(dim: SearchDim) -> Any:
    return dim.choices[0] if dim.kind == "choice" else dim.low


def current_values(method: Method, keys: list[str], profile: str) -> dict[str, Any]:
    """What ``method`` uses now for ``keys`` (method parameters or pretraining-loop settings)."""
    values = {}
    engine = method.engine_config(profile) if hasattr(method, "engine_config") else None
    for key in keys:
        source = method.params if hasattr(method.params, key) else engine
        values[key] = getattr(source, key)
    return values


# --- The study -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneTask:
    method: str
    dataset: str
    shots: str
    draws: int
    profile: str
    init: str | None = None
    split: str | None = None
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    """Fixed method parameters (``--param``); the searched ones are added per trial."""
    finetune: dict[str, Any] = field(default_factory=dict)

    def default_name(self) -> str:
        return f"tune-{self.method}-{self.dataset}-{self.shots}shot-{self.profile}"

    def identity(self) -> dict[str, Any]:
        """What a study was created for; rerunning it for something else is refused."""
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))


def tune_study(
    opened: OpenedStorage,
    name: str,
    task: TuneTask,
    sampler_seed: int | None,
    pruner: str = "median",
) -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=opened.storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5)
        if pruner == "median"
        else optuna.pruners.NopPruner(),
    )
    recorded = study.user_attrs.get("task")
    if recorded is None:
        study.set_user_attr("kind", "tune")
        study.set_user_attr("task", task.identity())
    elif recorded != task.identity():
        raise BenchError(
            f"study '{name}' in {opened.shown} was created to tune {_describe(recorded)}, not "
            f"{_describe(task.identity())}; pass another --name"
        )
    return study


def _describe(task: dict[str, Any]) -> str:
    extra = {
        k: v
        for k, v in task.items()
        if k not in ("method", "dataset", "shots", "profile", "draws") and v not in (None, {}, 0)
    }
    return (
        f"{task['method']} on {task['dataset']} ({task['shots']}-shot, {task['draws']} draws, "
        f"{task['profile']} profile{''.join(f', {k}={v}' for k, v in extra.items())})"
    )


def enqueue_defaults(
    study: optuna.Study, method: Method, space: dict[str, SearchDim], profile: str
) -> bool:
    """Make the first trial of a new study the method's current settings (when in range)."""
    if study.get_trials(deepcopy=False):
        return False
    values = current_values(method, list(space), profile)
    if not all(space[k].contains(v) for k, v in values.items()):
        return False
    study.enqueue_trial(values, user_attrs={LABEL: "defaults"})
    return True


def tune_objective(task: TuneTask, env: RunEnv, space: dict[str, SearchDim]):
    """Objective: suggest, run every draw, return the mean validation score; prune on the way."""
    from bench import runner
    from bench.profiles import finetune_config, get_profile

    steps = finetune_config(get_profile(task.profile), **task.finetune).steps

    def objective(trial: optuna.Trial) -> float:
        values = {k: suggest(trial, k, d) for k, d in space.items()}
        params = {**task.params, **values}
        finals: list[float] = []
        for draw in range(task.draws):
            best = -math.inf

            def on_eval(step: int, score: float, draw: int = draw) -> None:
                nonlocal best
                if math.isfinite(score):
                    best = max(best, score)
                if not math.isfinite(best):
                    return
                trial.report(sum([*finals, best]) / (len(finals) + 1), draw * steps + step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at draw {draw}, step {step}")

            spec = runner.RunSpec(
                method=task.method,
                dataset=task.dataset,
                split=task.split,
                shots=task.shots,
                draw=draw,
                profile=task.profile,
                init=task.init,
                seed=task.seed,
                params=params,
                finetune=dict(task.finetune),
            )
            outcome = runner.run_one(spec, env, on_eval=on_eval)
            finals.append(outcome.scores.get("val", math.nan))
            trial.set_user_attr("val_per_draw", finals)
        return sum(finals) / len(finals)

    return objective


def run_tuning(study: optuna.Study, objective: Any, trials: int) -> int:
    """Run trials until ``trials`` have completed or been pruned (a rerun tops the study up)."""
    from bench.finetune.train import TrainingDiverged

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = trials - len(study.get_trials(deepcopy=False, states=finished))
    if remaining > 0:
        study.optimize(
            objective,
            n_trials=remaining,
            catch=(TrainingDiverged,),
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)],
        )
    return max(remaining, 0)


# --- Best parameters -----------------------------------------------------------------------------


def save_best(
    study: optuna.Study, task: TuneTask, path: Path, storage_shown: str
) -> dict[str, Any]:
    """Write the best trial's parameters (merged over the fixed ones) to ``path``; return them."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise BenchError(f"study '{study.study_name}' has no complete trial yet: nothing to save")
    best = study.best_trial
    states = [t.state for t in study.get_trials(deepcopy=False)]
    defaults = [t for t in complete if t.user_attrs.get(LABEL) == "defaults"]
    record = {
        "method": task.method,
        "dataset": task.dataset,
        "profile": task.profile,
        "shots": task.shots,
        "draws": task.draws,
        "split": task.split,
        "seed": task.seed,
        "init": task.init,
        "finetune": task.finetune,
        "params": {**task.params, **best.params},
        "searched": best.params,
        "value": best.value,
        "metric": METRIC,
        "defaults_value": defaults[0].value if defaults else None,
        "trial": best.number,
        "study": study.study_name,
        "storage": storage_shown,
        "trials": {s.name.lower(): states.count(s) for s in TrialState if states.count(s)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return record


def load_tuned(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise BenchError(f"cannot read tuned parameters {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise BenchError(f"{path}: no 'params' object; expected a file written by `bench tune`")
    return data


def resolve_params(
    method: str,
    dataset: str,
    profile: str,
    params: dict[str, Any] | None = None,
    source: str | None = None,
    store_url: str | None = None,
    directory: Path | None = None,
) -> dict[str, Any]:
    """The method parameters a run uses: ``--param`` values over tuned ones.

    ``source``: None (just ``params``), ``best`` (``tuned_path(method, dataset, profile)``, written
    by ``bench tune``; a method that declares no search space keeps its defaults) or a JSON file
    of that format. ``store_url`` locates the default tuned folder (beside the results store).
    """
    params = dict(params or {})
    if not source:
        return params
    if source == "best":
        from bench.ssl.registry import get_method

        if not get_method(method).search_space(profile):
            return params
        path = tuned_path(method, dataset, profile, directory or tuned_dir(store_url))
        if not path.is_file():
            raise BenchError(
                f"--params best: no tuned parameters for {method} on {dataset} ({profile} "
                f"profile): {path} does not exist. Run `python -m bench tune --method {method} "
                f"--dataset {dataset} --profile {profile}` first"
            )
    else:
        path = Path(source)
        if not path.is_file():
            raise BenchError(
                f"--params {source}: no such file; use 'best' or a JSON file from `bench tune`"
            )
    data = load_tuned(path)
    if data.get("method", method) != method:
        raise BenchError(f"{path} holds parameters for method '{data['method']}', not '{method}'")
    return {**data["params"], **params}
