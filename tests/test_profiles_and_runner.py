"""Profiles and the run's identity: overrides are validated, a config hash names a grid point."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.core.errors import BenchError
from bench.profiles import PROFILES, finetune_config, get_profile
from bench.runner import RunEnv, RunSpec, prepare


def test_every_profile_is_valid_and_overrides_are_checked() -> None:
    for profile in PROFILES.values():
        assert finetune_config(profile) == profile.finetune
    quick = get_profile("quick")
    assert finetune_config(quick, steps=7, lr=None).steps == 7  # None: no override
    for bad, message in (
        ({"arch": "fpn"}, "unknown --arch 'fpn'"),
        ({"encoder": "vgg"}, "unknown --encoder 'vgg'"),
        ({"steps": 0}, "must be ≥ 1"),
    ):
        with pytest.raises(BenchError, match=message):
            finetune_config(quick, **bad)
    with pytest.raises(BenchError, match="unknown profile 'huge'; profiles: smoke, quick"):
        get_profile("huge")


def env(tmp_path: Path) -> RunEnv:
    return RunEnv(data_root=Path("."), store=None, device=torch.device("cpu"), cache_dir=tmp_path)


def test_the_config_hash_names_the_grid_point(tmp_path: Path) -> None:
    spec = RunSpec(method="simclr", dataset="synthetic", profile="smoke", shots="2")
    run = prepare(spec, env(tmp_path))
    assert run.hash == prepare(spec, env(tmp_path)).hash  # stable
    assert run.split == "generated" and len(run.shots) == 2
    for change in (
        {"draw": 1},
        {"shots": "1"},
        {"params": {"temperature": 0.2}},
        {"finetune": {"steps": 5}},
        {"seed": 1},
        {"modes": ("finetune",)},
    ):
        other = prepare(RunSpec(**{**spec.__dict__, **change}), env(tmp_path))
        assert other.hash != run.hash, change
    assert run.config["pretrain"]["method"] == "simclr"
    assert run.config["modes"] == ["finetune", "probe"]
    assert run.config["probe"] == {"steps": 20, "lr": 1e-2, "weight_decay": 1e-4, "eval_every": 10}
    finetune_only = prepare(RunSpec(**{**spec.__dict__, "modes": ("finetune",)}), env(tmp_path))
    assert "probe" not in finetune_only.config
    reordered = prepare(RunSpec(**{**spec.__dict__, "modes": ("probe", "finetune")}), env(tmp_path))
    assert reordered.hash == run.hash  # modes are a set, in canonical order
    assert (
        prepare(
            RunSpec(method="scratch", dataset="synthetic", profile="smoke"), env(tmp_path)
        ).config["pretrain"]
        is None
    )


def test_a_generated_card_has_one_split(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="generated dataset 'synthetic' has no splits"):
        prepare(
            RunSpec(method="scratch", dataset="synthetic", split="fold0", profile="smoke"),
            env(tmp_path),
        )


def test_unknown_or_no_evaluation_mode_is_a_clear_error(tmp_path: Path) -> None:
    for modes, shown in ((("linear",), "linear"), ((), "none given")):
        spec = RunSpec(method="scratch", dataset="synthetic", profile="smoke", modes=modes)
        with pytest.raises(BenchError, match=f"unknown evaluation mode.*{shown}.*finetune, probe"):
            prepare(spec, env(tmp_path))
