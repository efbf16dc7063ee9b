"""Hyperparameter search: Optuna TPE over a method's search space, pruned on validation.

The search space (``tune_space``) is the method's own (``Method.search_space``: Optuna
distributions) plus the fine-tuning settings every method shares, baselines included
(``finetune_space``: learning rate and weight decay, keys ``finetune.<field>``). No dimension
changes the compute: steps and epochs are never searched, so every trial and every method trains
as long.

A trial runs ``draws`` draws of one shots level with the suggested values and returns the MEAN
VALIDATION mIoU (``scores["val"]``, the honest mIoU of the validation-selected model): test
scores are never read. Its draws are its own: ids from ``TUNE_DRAW_OFFSET`` on, disjoint from the
draws a leaderboard reports (0, 1, ...), so the reported draws are untouched by the selection.
During fine-tuning the running mean (finished draws' selected scores and the current draw's best
so far) is reported at global step ``draw × steps + step``; ``MedianPruner`` may stop the trial,
never during its first full draw (warm-up) nor at the final validation of its last draw. Any
failure of a trial (pretraining or fine-tuning diverged, out of memory) fails that trial only.

Trials are asked one at a time (``run_tuning``): a trial whose number lies beyond ``--trials``
unfailed trials is failed unrun, and a second "defaults" trial (two processes starting a study
at once) is failed as a duplicate, so concurrent tune processes neither overshoot nor repeat it.
A top-up reseeds the sampler with the seed and the number of trials so far: it continues the
search instead of proposing the same points again.

The best parameters are written to ``<tuned dir>/<key>.json`` (``tuned_path``), keyed by
everything that selected them: method, dataset, split, shots, profile, init and the fine-tuning
overrides; the file records the trial count, sampler seed, search space and commit.
``resolve_params(..., source="best")`` looks that exact key up for ``--params best``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import TrialState

from bench.core.errors import BenchError
from bench.sweeps.studies import LABEL, OpenedStorage, results_dir

if TYPE_CHECKING:
    from bench.runner import RunEnv
    from bench.ssl.method import Method, SearchSpace

TUNED_DIR_ENV = "BENCH_TUNED_DIR"
METRIC = "mean validation mIoU (honest, model selected on validation) over the draws"
FINETUNE_PREFIX = "finetune."
TUNE_DRAW_OFFSET = 1000
DEFAULTS = "defaults"
SKIPPED = "skipped"


def tuned_dir(store_url: str | None = None) -> Path:
    """``$BENCH_TUNED_DIR``, else ``tuned/`` beside the results store (``results/tuned``)."""
    return Path(os.environ.get(TUNED_DIR_ENV) or results_dir(store_url) / "tuned")


@dataclass(frozen=True)
class TunedKey:
    """Everything that selected a set of tuned parameters; their file is named after it."""

    method: str
    dataset: str
    split: str
    shots: str
    profile: str
    init: str
    finetune: dict[str, Any] = field(default_factory=dict)
    """The fine-tuning overrides of the command line (``--lr``, ``--steps``...)."""

    def slug(self) -> str:
        parts = [self.method, self.dataset, self.split, f"{self.shots}shot", self.profile]
        parts.append(f"init-{self.init}")
        if self.finetune:
            text = json.dumps(self.finetune, sort_keys=True, default=str)
            parts.append("ft-" + hashlib.sha256(text.encode()).hexdigest()[:10])
        return "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", part) for part in parts)

    def describe(self) -> str:
        extra = f", fine-tuning overrides {self.finetune}" if self.finetune else ""
        shots = {"1": "1 shot", "all": "all labeled"}.get(self.shots, f"{self.shots} shots")
        return (
            f"{self.method} on {self.dataset} split {self.split}, {shots}, "
            f"{self.profile} profile, init {self.init}{extra}"
        )


def tuned_key(
    method: str,
    dataset: str,
    profile: str,
    *,
    split: str | None,
    shots: str,
    init: str | None,
    finetune: dict[str, Any] | None = None,
) -> TunedKey:
    """The key of a run's tuned parameters: the names resolved as a run resolves them."""
    from bench.data.cards import load_card
    from bench.data.protocol import parse_shots
    from bench.data.sources import source_for
    from bench.profiles import get_profile
    from bench.ssl.registry import get_method

    card = load_card(dataset)
    resolved_split = source_for(card, Path(".")).split_name(split)
    count = parse_shots(shots)
    method_cls = get_method(method)
    resolved_init = method_cls.fixed_init or init or get_profile(profile).default_init
    return TunedKey(
        method,
        card.full_name,
        resolved_split,
        "all" if count is None else str(count),
        profile,
        resolved_init,
        dict(sorted((finetune or {}).items())),
    )


def tuned_path(key: TunedKey, directory: Path | None = None) -> Path:
    return (directory or tuned_dir()) / f"{key.slug()}.json"


def default_tune_store(store_url: str | None = None) -> str:
    """``tune.sqlite`` beside the results store: tune runs never reach the leaderboard."""
    return f"sqlite:///{results_dir(store_url) / 'tune.sqlite'}"


# --- Search space ------------------------------------------------------------------------------


def finetune_space(profile: str) -> SearchSpace:
    """The fine-tuning settings searched for every method: learning rate ÷3..×3 and weight
    decay 1e-6..1e-2 around the profile's (log scales); never its steps."""
    from bench.profiles import get_profile

    base = get_profile(profile).finetune
    space: dict[str, BaseDistribution] = {
        f"{FINETUNE_PREFIX}lr": FloatDistribution(base.lr / 3, base.lr * 3, log=True)
    }
    if base.weight_decay > 0:
        wd = base.weight_decay
        space[f"{FINETUNE_PREFIX}weight_decay"] = FloatDistribution(
            min(1e-6, wd), max(1e-2, wd), log=True
        )
    return space


def tune_space(method_cls: type[Method], profile: str) -> SearchSpace:
    """The method's own search space plus ``finetune_space``."""
    return {**method_cls.search_space(profile), **finetune_space(profile)}


def describe_space(space: SearchSpace) -> str:
    """One line per dimension: ``lr: 0.005..0.5 (log)``, ``mode: a | b``."""
    lines = []
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            lines.append(f"{name}: {' | '.join(map(str, dist.choices))}")
            continue
        assert isinstance(dist, (FloatDistribution, IntDistribution))
        extra = " (log)" if dist.log else (f" step {dist.step:g}" if dist.step else "")
        lines.append(f"{name}: {dist.low:.3g}..{dist.high:.3g}{extra}")
    return "\n".join(lines)


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask the trial for ``name`` within ``dist``."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    raise ValueError(f"unsupported search distribution {dist!r} for '{name}'")


def search_space(
    method_cls: type[Method], profile: str, fixed: dict[str, Any] | None = None
) -> SearchSpace:
    """``tune_space`` without the ``fixed`` keys; BenchError if nothing is left to search."""
    space = {k: v for k, v in tune_space(method_cls, profile).items() if k not in (fixed or {})}
    if not space:
        raise BenchError(
            f"method '{method_cls.name}' has every searched parameter fixed with --param: "
            "nothing to tune"
        )
    own = {k: _probe(d) for k, d in space.items() if not k.startswith(FINETUNE_PREFIX)}
    method_cls(own)  # every key must be a valid --param
    return space


def split_params(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Searched values split into method parameters and fine-tuning overrides."""
    method = {k: v for k, v in values.items() if not k.startswith(FINETUNE_PREFIX)}
    finetune = {
        k.removeprefix(FINETUNE_PREFIX): v
        for k, v in values.items()
        if k.startswith(FINETUNE_PREFIX)
    }
    return method, finetune


def _probe(dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0]
    return dist.low  # type: ignore[attr-defined]


def current_values(
    method: Method, keys: list[str], profile: str, finetune: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a run uses now for ``keys``: method parameters, pretraining-loop settings, or
    (``finetune.<field>``) the profile's fine-tuning settings with ``finetune`` overrides."""
    from bench.profiles import finetune_config, get_profile

    values = {}
    engine = method.engine_config(profile) if hasattr(method, "engine_config") else None
    tuning = finetune_config(get_profile(profile), **(finetune or {}))
    for key in keys:
        if key.startswith(FINETUNE_PREFIX):
            values[key] = getattr(tuning, key.removeprefix(FINETUNE_PREFIX))
            continue
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
        return f"tune-{self.key().slug()}"

    def key(self) -> TunedKey:
        return tuned_key(
            self.method,
            self.dataset,
            self.profile,
            split=self.split,
            shots=self.shots,
            init=self.init,
            finetune=self.finetune,
        )

    def draw_ids(self) -> list[int]:
        """The draws a trial runs: its own, disjoint from every reported draw."""
        return [TUNE_DRAW_OFFSET + d for d in range(self.draws)]

    def identity(self) -> dict[str, Any]:
        """What a study was created for; rerunning it for something else is refused."""
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))


def tune_study(
    opened: OpenedStorage,
    name: str,
    task: TuneTask,
    sampler_seed: int | None,
    pruner: str = "median",
    warmup_steps: int = 0,
) -> optuna.Study:
    """Create or load the study; a top-up reseeds the sampler (``sampler_seed`` + trials so far).

    ``warmup_steps``: reports before this global step never prune (one full draw).
    """
    pruning = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_steps)
        if pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=name,
        storage=opened.storage,
        direction="maximize",
        load_if_exists=True,
        pruner=pruning,
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
    seed = None if sampler_seed is None else sampler_seed + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    if sampler_seed is not None:
        seeds = list(study.user_attrs.get("sampler_seeds", []))
        study.set_user_attr("sampler_seeds", [*seeds, sampler_seed])
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
    study: optuna.Study,
    method: Method,
    space: SearchSpace,
    profile: str,
    finetune: dict[str, Any] | None = None,
) -> bool:
    """Make the first trial of a new study the current settings (when in range)."""
    from bench.ssl.method import contains

    if study.get_trials(deepcopy=False):
        return False
    values = current_values(method, list(space), profile, finetune)
    if not all(contains(space[k], v) for k, v in values.items()):
        return False
    study.enqueue_trial(values, user_attrs={LABEL: DEFAULTS})
    return True


def tune_objective(task: TuneTask, env: RunEnv, space: SearchSpace):
    """Objective: suggest, run every draw, return the mean validation score; prune on the way."""
    from bench import runner
    from bench.profiles import finetune_config, get_profile

    steps = finetune_config(get_profile(task.profile), **task.finetune).steps
    draws = task.draw_ids()

    def objective(trial: optuna.Trial) -> float:
        values = {k: suggest(trial, k, d) for k, d in space.items()}
        own, tuned_finetune = split_params(values)
        params = {**task.params, **own}
        finals: list[float] = []
        for index, draw in enumerate(draws):
            best = -math.inf
            last = index == len(draws) - 1

            def on_eval(step: int, score: float, index: int = index, last: bool = last) -> None:
                nonlocal best
                if math.isfinite(score):
                    best = max(best, score)
                if not math.isfinite(best) or (last and step >= steps):
                    return  # nothing yet, or the final report: a finished trial is never pruned
                trial.report(sum([*finals, best]) / (len(finals) + 1), index * steps + step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at draw {index + 1}, step {step}")

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
                finetune={**tuned_finetune, **task.finetune},
            )
            outcome = runner.run_one(spec, env, on_eval=on_eval)
            finals.append(outcome.scores.get("val", math.nan))
            trial.set_user_attr("val_per_draw", finals)
        return sum(finals) / len(finals)

    return objective


def trial_failures() -> tuple[type[BaseException], ...]:
    """What fails one trial only: diverged pretraining or fine-tuning, a device out of memory."""
    import torch

    from bench.finetune.train import TrainingDiverged
    from bench.ssl.engine import PretrainFailed

    return (TrainingDiverged, PretrainFailed, torch.OutOfMemoryError)


def run_tuning(
    study: optuna.Study,
    objective: Any,
    trials: int,
    failures: tuple[type[BaseException], ...] | None = None,
) -> int:
    """Run trials until ``trials`` unfailed ones exist (a rerun tops the study up); returns how
    many this call ran. Safe with several processes on one study (see the module docstring)."""
    catch = trial_failures() if failures is None else failures
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its lines print bare fractions
    ran = 0
    while _unfailed(study) < trials:
        trial = study.ask()
        reason = _skip_reason(study, trial.number, trial.user_attrs.get(LABEL), trials)
        if reason:
            trial.set_user_attr(SKIPPED, reason)
            study.tell(trial, state=TrialState.FAIL)
            if reason.startswith("beyond"):
                break
            continue
        ran += 1
        try:
            value = objective(trial)
        except optuna.TrialPruned as exc:
            study.tell(trial, state=TrialState.PRUNED)
            _log(f"trial {trial.number}: {exc} ({_shown(trial)})")
        except catch as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            _log(f"trial {trial.number} failed ({type(exc).__name__}: {exc}); the study goes on")
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            if math.isfinite(value):
                study.tell(trial, value)
                _log(f"trial {trial.number}: {METRIC} {100 * value:.2f} % ({_shown(trial)})")
            else:  # a NaN validation score: failed, like a diverged run
                trial.set_user_attr("error", f"objective value {value}")
                study.tell(trial, state=TrialState.FAIL)
    return ran


def _log(text: str) -> None:
    from rich.markup import escape

    from bench.core.console import console

    console.print(escape(text), highlight=False, soft_wrap=True)


def _shown(trial: optuna.Trial) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )


def _unfailed(study: optuna.Study) -> int:
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # WAITING: unasked
    return len(study.get_trials(deepcopy=False, states=states))


def _skip_reason(study: optuna.Study, number: int, label: str | None, trials: int) -> str:
    """Why trial ``number`` must not run: beyond the budget, or a second defaults trial."""
    earlier = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number < number and t.state != TrialState.FAIL
    ]
    if label == DEFAULTS and any(t.user_attrs.get(LABEL) == DEFAULTS for t in earlier):
        return "duplicate of the defaults trial (another process enqueued it first)"
    if len(earlier) >= trials:
        return f"beyond --trials {trials} (other processes took the remaining trials)"
    return ""


# --- Best parameters -----------------------------------------------------------------------------


def save_best(
    study: optuna.Study,
    task: TuneTask,
    path: Path,
    storage_shown: str,
    space: SearchSpace,
    sampler_seed: int | None,
) -> dict[str, Any]:
    """Write the best trial's parameters (merged over the fixed ones) to ``path``; return them."""
    from bench.core.provenance import git_commit

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise BenchError(f"study '{study.study_name}' has no complete trial yet: nothing to save")
    best = study.best_trial
    states = [t.state for t in study.get_trials(deepcopy=False) if SKIPPED not in t.user_attrs]
    defaults = [t for t in complete if t.user_attrs.get(LABEL) == DEFAULTS]
    own, tuned_finetune = split_params(best.params)
    finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    record = {
        "key": asdict(task.key()),
        "draws": task.draws,
        "draw_ids": task.draw_ids(),
        "seed": task.seed,
        "params": {**task.params, **own},
        "finetune": tuned_finetune,
        "searched": best.params,
        "search_space": {k: json.loads(distribution_to_json(d)) for k, d in space.items()},
        "value": best.value,
        "metric": METRIC,
        "defaults_value": defaults[0].value if defaults else None,
        "trial": best.number,
        "n_trials": finished,
        "trials": {s.name.lower(): states.count(s) for s in TrialState if states.count(s)},
        "sampler_seed": sampler_seed,
        "sampler_seeds": study.user_attrs.get("sampler_seeds", []),
        "study": study.study_name,
        "storage": storage_shown,
        "commit": git_commit(),
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


@dataclass(frozen=True)
class Tuned:
    """What a run takes from tuning: method parameters, fine-tuning overrides, a row marker."""

    params: dict[str, Any]
    finetune: dict[str, Any] = field(default_factory=dict)
    trials: int | None = None  # None: not tuned


def resolve_params(
    key: TunedKey,
    params: dict[str, Any] | None = None,
    source: str | None = None,
    store_url: str | None = None,
    directory: Path | None = None,
) -> Tuned:
    """The parameters a run uses: ``--param`` values over tuned ones.

    ``source``: None (just ``params``), ``best`` (``tuned_path(key)``, written by ``bench tune``
    for exactly this method, dataset, split, shots, profile, init and fine-tuning overrides;
    missing is an error naming the file) or a JSON file of that format. ``store_url`` locates the
    default tuned folder (beside the results store).
    """
    params = dict(params or {})
    if not source:
        return Tuned(params)
    if source == "best":
        path = tuned_path(key, directory or tuned_dir(store_url))
        if not path.is_file():
            raise BenchError(
                f"--params best: no tuned parameters for {key.describe()}: {path} does not "
                f"exist. Run `python -m bench tune --method {key.method} --dataset "
                f"{key.dataset} --split {key.split} --shots {key.shots} --profile "
                f"{key.profile}` (with the same --init and fine-tuning options) first"
            )
    else:
        path = Path(source)
        if not path.is_file():
            raise BenchError(
                f"--params {source}: no such file; use 'best' or a JSON file from `bench tune`"
            )
    data = load_tuned(path)
    stored = data.get("key", {}).get("method", key.method)
    if stored != key.method:
        raise BenchError(f"{path} holds parameters for method '{stored}', not '{key.method}'")
    return Tuned(
        {**data["params"], **params},
        dict(data.get("finetune", {})),
        int(data.get("n_trials") or 0) or None,
    )
