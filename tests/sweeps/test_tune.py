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
    """Every key a method searches is a parameter it accepts, at both ends of its range."""
    from bench.ssl.registry import all_methods
    from bench.sweeps.tune import current_values

    searched = {}
    for cls in all_methods():
        for profile in ("smoke", "quick", "standard", "matssl-paper", "pscl-paper"):
            space = cls.search_space(profile)
            for edge in ("low", "high"):
                values = {
                    k: (d.choices[0] if d.kind == "choice" else getattr(d, edge))
                    for k, d in space.items()
                }
                cls(values)  # BenchError on an unknown key or ill-typed value
            defaults = current_values(cls(), list(space), profile)
            assert all(space[k].contains(v) for k, v in defaults.items()), (
                cls.name,
                profile,
                defaults,
            )
            searched[cls.name] = set(space)
    assert {"lr", "temperature", "steps"} <= searched["simclr"]
    assert {"lr", "temperature", "steps"} <= searched["matssl"]
    assert {"lr", "temperature", "loss_lambda"} <= searched["densecl"]
    assert {"lr", "temperature", "patch_weight"} <= searched["pscl"]
    assert {"lr", "momentum_base"} <= searched["byol"]
    assert searched["scratch"] == set()


def fake_run_one(calls: list):
    """Stands in for ``runner.run_one``: validation peaks at lr = 0.01 (test score unrelated)."""
    from bench.runner import RunOutcome

    def run_one(spec, env, on_eval=None):
        lr = float(spec.params["lr"])
        val = 0.8 * math.exp(-(math.log10(lr / OPTIMUM_LR) ** 2)) + 0.01 * spec.draw
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
    study = load_study(open_storage(storage), "tune-simclr-synthetic-1shot-smoke")
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
    assert {d for d, _ in calls} == {0, 1}

    saved = tmp_path / "store" / "tuned" / "simclr-synthetic-smoke.json"
    record = json.loads(saved.read_text())
    assert record["params"]["lr"] == pytest.approx(study.best_params["lr"])
    assert (
        record["value"] == pytest.approx(study.best_value)
        and record["defaults_value"] == first.value
    )
    assert "saved to" in out and "optuna-dashboard" in out

    # --params best: tuned values, with --param on top; methods without a search space keep theirs.
    from bench.sweeps.tune import resolve_params

    params = resolve_params(
        "simclr", "synthetic", "smoke", {"temperature": "0.3"}, "best", store_url=tmp_store_url
    )
    assert params["lr"] == pytest.approx(study.best_params["lr"]) and params["temperature"] == "0.3"
    assert resolve_params("scratch", "synthetic", "smoke", {}, "best") == {}
    assert resolve_params("simclr", "synthetic", "smoke", {}, str(saved))["lr"] == params["lr"]
    with pytest.raises(BenchError, match="bench tune --method matssl"):
        resolve_params("matssl", "synthetic", "smoke", {}, "best", store_url=tmp_store_url)

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
            "tune-simclr-synthetic-1shot-smoke",
        ]
    )
    assert code == 2 and "was created to tune simclr on synthetic (1-shot, 2 draws" in err

    # The sweep uses the tuned parameters with --params best.
    code, out, err = cli(
        [
            "sweep",
            "--methods",
            "scratch,simclr",
            "--datasets",
            "synthetic",
            "--profile",
            "smoke",
            "--params",
            "best",
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
    assert specs["scratch"]["params"] == {}

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
    code, _, err = cli(
        ["tune", "--method", "scratch", "--dataset", "synthetic", "--profile", "smoke"]
    )
    assert code == 2 and "declares no search space" in err
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
    assert (tmp_path / "store" / "tuned" / "simclr-synthetic-smoke.json").is_file()
