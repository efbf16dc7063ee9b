"""Hyperparameter search: search spaces, the TPE + pruner loop, best-parameter files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.core.errors import BenchError
from bench.results.store import ResultStore

OPTIMUM_LR = 0.01


def test_declared_search_spaces_are_valid_params() -> None:
    """Every key searched is a parameter the method (or fine-tuning) accepts, at both ends of
    its range; the current settings lie inside; nothing changes the compute; every method,
    baselines included, searches the fine-tuning settings."""
    from optuna.distributions import CategoricalDistribution

    from bench.ssl.method import contains
    from bench.ssl.registry import all_methods
    from bench.sweeps.tune import current_values, split_params, tune_space

    searched = {}
    for cls in all_methods():
        for profile in ("smoke", "quick", "standard", "matssl-paper", "pscl-paper"):
            space = tune_space(cls, profile)
            for edge in ("low", "high"):
                values = {
                    k: d.choices[0] if isinstance(d, CategoricalDistribution) else getattr(d, edge)
                    for k, d in space.items()
                }
                cls(split_params(values)[0])  # BenchError on an unknown key or ill-typed value
            defaults = current_values(cls(), list(space), profile)
            assert all(contains(space[k], v) for k, v in defaults.items()), (cls.name, profile)
            assert not {"steps", "epochs", "finetune.steps"} & set(space)
            if profile == "quick":
                searched[cls.name] = set(space)
    assert {"lr", "temperature", "finetune.lr"} <= searched["simclr"]
    assert {"lr", "temperature"} <= searched["matssl"]
    assert {"lr", "temperature", "loss_lambda"} <= searched["densecl"]
    assert {"lr", "temperature", "patch_weight"} <= searched["pscl"]
    assert {"lr", "momentum_base"} <= searched["byol"]
    assert searched["scratch"] == searched["imagenet"] == {"finetune.lr", "finetune.weight_decay"}


def test_optuna_distributions_check_what_search_dim_did_not() -> None:
    from optuna.distributions import FloatDistribution, IntDistribution

    from bench.ssl.method import contains

    with pytest.raises(ValueError, match="low <= high"):
        FloatDistribution(1.0, 0.1)  # low > high
    with pytest.raises(ValueError, match="low > 0"):
        FloatDistribution(0.0, 1.0, log=True)  # log with low <= 0
    assert not contains(IntDistribution(0, 10, step=2), 3)  # off the step
    assert contains(IntDistribution(0, 10, step=2), 4) and not contains(FloatDistribution(0, 1), 2)


def fake_run_one(calls: list):
    """Stands in for ``runner.run_one``: validation peaks at lr = 0.01 (test score unrelated)."""
    from bench.runner import RunOutcome

    def run_one(spec, env, on_eval=None):
        lr = float(spec.params["lr"])
        val = 0.8 * math.exp(-(math.log10(lr / OPTIMUM_LR) ** 2)) + 0.01 * (spec.draw % 1000)
        calls.append((spec.draw, lr))
        if on_eval is not None:
            for step in (1, 2, 3, 4):
                on_eval(step, val * step / 4)
        return RunOutcome(
            spec,
            "succeeded",
            f"h{len(calls)}",
            len(calls),
            {"val": val, "honest": 0.123, "oracle": 0.2},
        )

    return run_one


def test_tune_finds_a_better_lr_and_saves_it(
    cli, tmp_path: Path, tmp_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import runner
    from bench.sweeps.studies import load_study, open_storage

    calls: list = []
    monkeypatch.setattr(runner, "run_one", fake_run_one(calls))
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    argv = [
        "tune",
        "--method",
        "simclr",
        "--dataset",
        "synthetic",
        "--profile",
        "smoke",
        "--trials",
        "24",
        "--draws",
        "2",
        "--sampler-seed",
        "1",
        "--storage",
        storage,
    ]
    code, out, err = cli(argv)
    assert code == 0, out + err
    name = "tune-simclr-synthetic-generated-1shot-smoke-init_random"
    study = load_study(open_storage(storage), name)
    trials = study.get_trials(deepcopy=False)
    first = trials[0]
    assert first.user_attrs["label"] == "defaults" and first.params["lr"] == pytest.approx(0.05)
    assert study.best_value > first.value
    assert abs(math.log10(study.best_params["lr"] / OPTIMUM_LR)) < abs(
        math.log10(0.05 / OPTIMUM_LR)
    )
    assert any(t.state.name == "PRUNED" for t in trials), "the median pruner never stopped a trial"
    # The objective is the mean over the draws of the validation score.
    assert first.value == pytest.approx(sum(first.user_attrs["val_per_draw"]) / 2)
    assert {d for d, _ in calls} == {1000, 1001}  # its own draws, never a reported one
    assert not any(t.state.name == "PRUNED" and len(t.user_attrs.get("val_per_draw", [])) == 2
                   for t in trials)  # a trial that finished both draws is never pruned  # fmt: skip

    saved = tmp_path / "store" / "tuned" / f"{name.removeprefix('tune-')}.json"
    record = json.loads(saved.read_text())
    assert record["key"]["split"] == "generated" and record["key"]["shots"] == "1"
    assert record["sampler_seed"] == 1 and record["n_trials"] == 24
    assert record["search_space"]["lr"]["name"] == "FloatDistribution"
    assert "finetune.lr" in record["search_space"] and "commit" in record
    assert record["params"]["lr"] == pytest.approx(study.best_params["lr"])
    assert (
        record["value"] == pytest.approx(study.best_value)
        and record["defaults_value"] == first.value
    )
    assert "saved to" in out and "optuna-dashboard" in out

    # --params best: tuned values, with --param on top; methods without a search space keep theirs.
    from bench.sweeps.tune import resolve_params, tuned_key

    def key(method: str, shots: str = "1"):
        return tuned_key(method, "synthetic", "smoke", split=None, shots=shots, init=None)

    tuned = resolve_params(key("simclr"), {"temperature": "0.3"}, "best", store_url=tmp_store_url)
    params = tuned.params
    assert params["lr"] == pytest.approx(study.best_params["lr"]) and params["temperature"] == "0.3"
    assert tuned.finetune["lr"] == pytest.approx(study.best_params["finetune.lr"])
    assert tuned.trials == 24
    assert resolve_params(key("simclr"), {}, str(saved)).params["lr"] == params["lr"]
    with pytest.raises(BenchError, match="bench tune --method matssl") as missing:
        resolve_params(key("matssl"), {}, "best", store_url=tmp_store_url)
    assert "matssl-synthetic-generated-1shot-smoke-init_random.json does not exist" in str(
        missing.value
    )
    with pytest.raises(BenchError, match="2shot"):  # another shots level: not this file
        resolve_params(key("simclr", "2"), {}, "best", store_url=tmp_store_url)

    # A rerun tops the study up to --trials finished trials; another task under the name is refused.
    n = len(calls)
    code, _, err = cli(argv)
    assert code == 0 and len(calls) == n
    code, _, err = cli(
        [
            *argv[:-2],
            "--storage",
            storage,
            "--draws",
            "3",
            "--name",
            name,
        ]
    )
    assert code == 2 and "was created to tune simclr on synthetic (1-shot, 2 draws" in err

    # The sweep uses the tuned parameters with --params best.
    code, out, err = cli(
        [
            "sweep",
            "--methods",
            "simclr",
            "--datasets",
            "synthetic",
            "--profile",
            "smoke",
            "--params",
            "best",
            "--shots",
            "1",
            "--workers",
            "0",
            "--storage",
            storage,
            "--name",
            "tuned-sweep",
        ]
    )
    assert code == 0, err
    specs = {
        t.user_attrs["method"]: t.user_attrs["spec"]
        for t in load_study(open_storage(storage), "tuned-sweep").get_trials()
    }
    assert specs["simclr"]["params"]["lr"] == pytest.approx(study.best_params["lr"])
    assert specs["simclr"]["params"]["finetune.lr"] == pytest.approx(
        study.best_params["finetune.lr"]
    )

    # ... and so does `run`.
    code, out, err = cli(
        [
            "run",
            "--method",
            "simclr",
            "--dataset",
            "synthetic",
            "--profile",
            "smoke",
            "--params",
            "best",
        ]
    )
    assert code == 0, out + err
    assert calls[-1] == (0, pytest.approx(study.best_params["lr"]))
    code, _, err = cli(["run", "--method", "matssl", "--dataset", "synthetic", "--params", "best"])
    assert code == 2 and "no tuned parameters for matssl" in err


def test_tune_errors(cli) -> None:
    argv = ["tune", "--method", "scratch", "--dataset", "synthetic", "--profile", "smoke"]
    fixed = ["--param", "finetune.lr=0.001", "--param", "finetune.weight_decay=0.001"]
    code, _, err = cli([*argv, *fixed])
    assert code == 2 and "every searched parameter fixed" in err
    code, _, err = cli(["tune", "--method", "simclr", "--dataset", "synthetic", "--shots", "1,2"])
    assert code == 2 and "one --shots level" in err


def test_real_tune_trial_stays_out_of_the_main_store(
    cli, tmp_path: Path, tmp_store_url: str
) -> None:
    """One real trial (pretrain + fine-tune, smoke): its run goes to tune.sqlite, not the store."""
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    code, out, err = cli(
        [
            "tune",
            "--method",
            "simclr",
            "--dataset",
            "synthetic",
            "--profile",
            "smoke",
            "--trials",
            "1",
            "--draws",
            "1",
            "--storage",
            storage,
        ]
    )
    assert code == 0, out + err
    tune_store = ResultStore(f"sqlite:///{tmp_path / 'store' / 'tune.sqlite'}")
    [run] = tune_store.runs(status="succeeded")
    assert run.method == "simclr" and run.config["pretrain"]["engine"]["lr"] == pytest.approx(0.05)
    assert ResultStore(tmp_store_url).runs() == []
    tuned = tmp_path / "store" / "tuned" / "simclr-synthetic-generated-1shot-smoke-init_random.json"
    assert tuned.is_file()


def test_tuned_files_are_keyed_by_split_and_shots(tmp_path: Path) -> None:
    """Two splits × two shots levels: four files; a lookup never borrows another's."""
    from bench.sweeps.tune import Tuned, resolve_params, tuned_key, tuned_path

    keys = {
        (split, shots): tuned_key(
            "simclr", "metaldam", "quick", split=split, shots=shots, init=None
        )
        for split in ("fold0", "fold1")
        for shots in ("1", "2")
    }
    paths = {k: tuned_path(key, tmp_path) for k, key in keys.items()}
    assert len(set(paths.values())) == 4
    assert paths[("fold1", "2")].name == "simclr-metaldam-fold1-2shot-quick-init_random.json"
    with_lr = tuned_key(
        "simclr", "metaldam", "quick", split="fold0", shots="1", init=None, finetune={"lr": 1e-3}
    )
    assert tuned_path(with_lr, tmp_path) != paths[("fold0", "1")]  # fine-tuning options too
    assert tuned_key("scratch", "metaldam", "quick", split="fold0", shots="1", init="imagenet") \
        .init == "random"  # a baseline's fixed init is the one recorded  # fmt: skip
    paths[("fold0", "1")].write_text(json.dumps({"params": {"temperature": 0.2}, "n_trials": 7}))
    found = resolve_params(keys[("fold0", "1")], {}, "best", directory=tmp_path)
    assert found == Tuned({"temperature": 0.2}, {}, 7)
    for other in (("fold1", "1"), ("fold0", "2")):
        with pytest.raises(BenchError) as missing:
            resolve_params(keys[other], {}, "best", directory=tmp_path)
        assert str(paths[other]) in str(missing.value)  # names the file it looked for


def toy_study(tmp_path: Path, name: str, seed: int | None = 0):
    from bench.sweeps.studies import open_storage
    from bench.sweeps.tune import TuneTask, tune_study

    opened = open_storage(f"sqlite:///{tmp_path / 'optuna.sqlite'}")
    task = TuneTask("simclr", "synthetic", "1", 2, "smoke")
    return tune_study(opened, name, task, seed, "none")


def test_a_failed_pretraining_fails_one_trial_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna.trial import TrialState

    from bench import runner
    from bench.runner import RunOutcome
    from bench.ssl.engine import PretrainFailed
    from bench.ssl.registry import get_method
    from bench.sweeps.tune import TuneTask, run_tuning, search_space, tune_objective

    runs = []

    def run_one(spec, env, on_eval=None):
        runs.append(spec)
        if len(runs) == 3:  # the second trial's first draw: pretraining loss went NaN
            raise PretrainFailed("pretraining loss is nan at step 2")
        return RunOutcome(spec, "succeeded", "h", len(runs), {"val": 0.5})

    monkeypatch.setattr(runner, "run_one", run_one)
    study = toy_study(tmp_path, "nan")
    task = study.user_attrs["task"]
    space = search_space(get_method("simclr"), "smoke")
    run_tuning(study, tune_objective(TuneTask(**task), None, space), 4)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 4
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert "PretrainFailed" in failed.user_attrs["error"]


def toy_objective(trial) -> float:
    import time

    x = trial.suggest_float("x", 0.0, 1.0)
    time.sleep(0.02)
    return -((x - 0.3) ** 2)


def test_a_top_up_continues_the_sampler(tmp_path: Path) -> None:
    from bench.sweeps.tune import run_tuning

    run_tuning(toy_study(tmp_path, "topup", seed=0), toy_objective, 3)
    study = toy_study(tmp_path, "topup", seed=0)  # the same --sampler-seed again
    assert run_tuning(study, toy_objective, 6) == 3
    xs = [t.params["x"] for t in study.trials]
    assert len(xs) == 6 and len(set(xs)) == 6  # no proposal repeated
    assert study.user_attrs["sampler_seeds"] == [0, 0]


def tune_process(folder: str, trials: int) -> None:
    from bench.sweeps.studies import LABEL
    from bench.sweeps.tune import DEFAULTS, run_tuning

    study = toy_study(Path(folder), "concurrent")
    study.enqueue_trial({"x": 0.5}, user_attrs={LABEL: DEFAULTS})  # both saw an empty study
    run_tuning(study, toy_objective, trials)


def test_concurrent_tune_processes_stop_at_trials_with_one_defaults_trial(
    tmp_path: Path,
) -> None:
    import multiprocessing

    from optuna.trial import TrialState

    toy_study(tmp_path, "concurrent")  # created once, as the first process would
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=tune_process, args=(str(tmp_path), 6)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    study = toy_study(tmp_path, "concurrent")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    assert sum(t.user_attrs.get("label") == "defaults" for t in complete) == 1
    skipped = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all("skipped" in t.user_attrs for t in skipped)


def test_tune_keeps_study_runs_and_parameters_beside_store(
    cli, tmp_path: Path, tmp_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import runner

    elsewhere = tmp_path / "elsewhere"
    argv = ["tune", "--method", "scratch", "--dataset", "synthetic", "--profile", "smoke"]
    store = f"sqlite:///{elsewhere / 'bench.sqlite'}"
    monkeypatch.setattr(  # validation score = the fine-tuning lr tried
        runner,
        "run_one",
        lambda spec, env, on_eval=None: runner.RunOutcome(
            spec, "succeeded", "h", 1, {"val": float(spec.finetune["lr"])}
        ),
    )
    code, out, err = cli([*argv, "--trials", "2", "--draws", "1", "--store", store])
    assert code == 0, out + err
    assert (elsewhere / "optuna.sqlite").is_file()
    (saved,) = (elsewhere / "tuned").glob("scratch-synthetic-generated-1shot-smoke-*.json")
    assert "finetune" in json.loads(saved.read_text())  # a baseline, tuned on fine-tuning
    assert not (tmp_path / "store" / "tuned").exists()  # nothing beside the default store
    assert "mean validation mIoU" in out and " %" in out
