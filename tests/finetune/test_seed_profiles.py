"""The seed-faithful profiles: their settings are the seeds' (``shared/reference/``), both run
end to end on MetalDAM at smoke size, and every run stores the working scale it used."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profiles import get_profile
from bench.results.store import ResultStore
from bench.runner import RunEnv, RunSpec, make_env, prepare, run_one
from bench.ssl.registry import get_method
from tests.helpers.weights import fake_imagenet_weights

SMOKE_PRETRAIN = {"steps": 2, "batch_size": 2, "view_size": 64, "pool_limit": 4}
"""Shrinks any profile's pretraining to seconds; everything else stays the profile's."""


def test_matssl_paper_is_the_matssl_seed() -> None:
    """matssl.md §3.1–3.2 (fine-tuning) and §2 (pretraining)."""
    profile = get_profile("matssl-paper")
    ft = profile.finetune
    assert (ft.arch, ft.encoder, profile.default_init) == ("unetplusplus", "resnet50", "imagenet")
    assert (ft.crop, ft.augment, ft.jitter) == (0, False, 0.0)  # whole images, no augmentation
    assert (ft.batch_size, ft.batching, ft.steps) == (128, "epoch", 200)  # 200 epochs, 1 step each
    assert (ft.lr, ft.pretrained_lr, ft.weight_decay, ft.schedule) == (1e-4, 0.0, 0.0, "constant")
    assert (ft.loss, ft.eval_every, ft.scale) == ("dice", 1, "protocol:matssl-paper")
    pre = get_method("matssl")().engine_config("matssl-paper")
    assert (pre.optimizer, pre.lr, pre.momentum, pre.weight_decay) == ("sgd", 0.1, 0.9, 1e-6)
    assert (pre.schedule, pre.warmup_steps, pre.batch_size, pre.view_size) == ("cosine", 0, 32, 224)
    assert pre.crop == "image" and pre.steps == 5000


def test_pscl_paper_is_the_pscl_seed() -> None:
    """pscl.md §3 (fine-tuning) and §1.9, §2 (pretraining)."""
    profile = get_profile("pscl-paper")
    ft = profile.finetune
    assert (ft.arch, profile.default_init) == ("unet", "random")
    assert (ft.crop, ft.augment, ft.jitter, ft.batch_size, ft.steps) == (384, True, 0.08, 1, 1000)
    assert (ft.lr, ft.pretrained_lr, ft.weight_decay, ft.schedule) == (1e-3, 1e-4, 0.0, "constant")
    assert (ft.loss, ft.rare_weight, ft.eval_every, ft.scale) == ("wce+fgdice", 10.0, 200, "card")
    method = get_method("pscl")()
    pre = method.engine_config("pscl-paper")
    assert (pre.optimizer, pre.lr, pre.weight_decay, pre.schedule) == (
        "adam",
        1e-4,
        0.0,
        "constant",
    )
    assert (pre.batch_size, pre.steps, pre.view_size) == (8, 4800, 384)
    assert pre.zoom_min == pre.zoom_max == 1.0  # 384² tiles of native pixels
    assert method.network("pscl-paper") == "whole"
    p = method.params
    assert (p.temperature, p.patch_weight, p.samples, p.sample_ratio) == (0.5, 0.7, 4, 2)
    assert p.sub_min == 0.8 and p.jitter == 0.16


def _env(shared_data: Path, tmp_path: Path, url: str) -> RunEnv:
    return make_env(str(shared_data), url, "cpu", str(tmp_path / "cache"))


def _stored(url: str, run_id: int | None):
    (run,) = ResultStore(url).runs(id=run_id)
    return run


def test_matssl_paper_smoke_runs_on_metaldam(
    shared_data: Path, tmp_path: Path, tmp_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
    fake_imagenet_weights(tmp_path / "weights", monkeypatch)  # the profile's ImageNet init
    spec = RunSpec(
        method="matssl",
        dataset="metaldam",
        profile="matssl-paper",
        params=SMOKE_PRETRAIN,
        finetune={"encoder": "resnet18", "steps": 2},
    )
    outcome = run_one(spec, _env(shared_data, tmp_path, tmp_store_url))
    assert outcome.status == "succeeded" and set(outcome.scores) >= {"honest", "matssl-paper"}
    run = _stored(tmp_store_url, outcome.run_id)
    config = run.config
    assert config["scale"] == "256x256" and config["pretrain"]["scale"] == "256x256"
    assert config["init"] == "imagenet" and config["finetune"]["batching"] == "epoch"
    assert config["pretrain"]["engine"]["crop"] == "image"
    assert [e["step"] for e in run.summary["evals"]] == [1, 2]  # evaluated every step


def test_pscl_paper_smoke_runs_on_metaldam(
    shared_data: Path, tmp_path: Path, tmp_store_url: str
) -> None:
    """Whole-network PSCL pretraining, its decoder loaded into the fine-tuned U-Net, the seed's
    loss and learning rates; shrunk to seconds (a half-size working scale for the evaluation)."""
    spec = RunSpec(
        method="pscl",
        dataset="metaldam",
        profile="pscl-paper",
        params={**SMOKE_PRETRAIN, "view_size": 64},
        finetune={"steps": 2, "crop": 64, "eval_every": 2, "scale": "352x512"},
    )
    outcome = run_one(spec, _env(shared_data, tmp_path, tmp_store_url))
    assert outcome.status == "succeeded" and "pscl-paper" in outcome.scores
    run = _stored(tmp_store_url, outcome.run_id)
    config, summary = run.config, run.summary
    assert config["scale"] == "352x512" and config["pretrain"]["params"]["network"] == "whole"
    assert config["pretrain"]["arch"] == "unet" and config["init"] == "random"
    assert summary["pretrained_parts"] == ["encoder", "decoder"]
    assert (
        config["finetune"]["loss"] == "wce+fgdice" and config["finetune"]["pretrained_lr"] == 1e-4
    )


def test_the_scale_is_part_of_the_runs_identity(tmp_path: Path) -> None:
    import torch

    env = RunEnv(data_root=Path("."), store=None, device=torch.device("cpu"), cache_dir=tmp_path)
    base = prepare(RunSpec(method="simclr", dataset="synthetic", profile="smoke"), env)
    scaled = prepare(
        RunSpec(method="simclr", dataset="synthetic", profile="smoke", finetune={"scale": "64x64"}),
        env,
    )
    assert base.config["scale"] == "native" and scaled.config["scale"] == "64x64"
    assert scaled.config["pretrain"]["scale"] == "64x64" and scaled.hash != base.hash
