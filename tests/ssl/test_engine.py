"""The shared pretraining loop: cache keys, resume, NaN handling, strict export, batches."""

from __future__ import annotations

import dataclasses
import json

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file

import bench.ssl.engine as pretrain
from bench.data.cards import ScaleSpec
from bench.models.segmenter import PretrainedWeights, build_segmenter
from bench.profiles import get_profile
from bench.ssl.cache import CARD_FILE, ENCODER_FILE
from bench.ssl.checkpoint import CHECKPOINT_FILE
from bench.ssl.registry import get_method
from tests.helpers.ssl import synthetic_context

TINY = {"steps": 4, "batch_size": 4, "view_size": 64, "pool_limit": 8}


def _method(**extra):
    return get_method("simclr")({**TINY, **extra})


def test_cache_hit_on_second_run_and_miss_when_a_keyed_field_changes(tmp_path, monkeypatch):
    ctx = synthetic_context(tmp_path)
    first = pretrain.pretrain_encoder(_method(), ctx)
    second = pretrain.pretrain_encoder(_method(), ctx)
    assert not first.cached and second.cached
    assert second.folder == first.folder and second.losses == first.losses
    for key in first.weights.encoder:
        assert torch.equal(first.weights.encoder[key], second.weights.encoder[key])

    base = pretrain.cache_folder(_method(), ctx)
    changed = [
        pretrain.cache_folder(_method(lr=0.01), ctx),
        pretrain.cache_folder(_method(steps=5), ctx),
        pretrain.cache_folder(_method(zoom_max=1.5), ctx),
        pretrain.cache_folder(_method(crop="image"), ctx),
        pretrain.cache_folder(get_method("simclr")({**TINY, "temperature": 0.2}), ctx),
        pretrain.cache_folder(_method(), dataclasses.replace(ctx, seed=1)),
        pretrain.cache_folder(_method(), dataclasses.replace(ctx, encoder="resnet34")),
        pretrain.cache_folder(_method(), dataclasses.replace(ctx, init="imagenet")),
        pretrain.cache_folder(_method(), dataclasses.replace(ctx, profile="quick")),
        pretrain.cache_folder(_method(), dataclasses.replace(ctx, scale=ScaleSpec((64, 64)))),
        pretrain.cache_folder(get_method("matssl")(TINY), ctx),
    ]
    assert len({base, *changed}) == len(changed) + 1
    # The draw does not matter for label-free methods.
    assert pretrain.cache_folder(_method(), dataclasses.replace(ctx, draw=3)) == base
    # A recipe changed in code changes the key too (the views are part of it).
    import methods.simclr as simclr

    monkeypatch.setattr(simclr, "SIMCLR_VIEW", dataclasses.replace(simclr.SIMCLR_VIEW, blur=0.1))
    assert pretrain.cache_folder(_method(), ctx) != base


def test_the_thread_count_is_part_of_the_cache_key(tmp_path):
    """1 and 2 CPU threads give different pretrainings (``compute_fingerprint``): they are cached
    apart."""
    ctx = synthetic_context(tmp_path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pretrain.cache_folder(_method(), ctx)
        assert pretrain.compute_fingerprint(ctx.device) == {
            "device": "cpu",
            "precision": "fp32",
            "threads": 1,
        }
        torch.set_num_threads(2)
        two = pretrain.cache_folder(_method(), ctx)
    finally:
        torch.set_num_threads(before)
    assert one != two
    assert pretrain.compute_fingerprint(torch.device("cuda")) == {
        "device": "cuda",
        "precision": "fp32",
    }


def test_the_precision_is_part_of_the_cache_key(tmp_path):
    """fp32 and bf16 pretrainings are cached apart, under the resolved precision."""
    ctx = synthetic_context(tmp_path)
    fp32 = pretrain.cache_folder(_method(), ctx)
    bf16 = pretrain.cache_folder(_method(), dataclasses.replace(ctx, precision="bf16"))
    assert fp32 != bf16
    assert pretrain.compute_fingerprint(ctx.device, "bf16")["precision"] == "bf16"


def test_resume_continues_from_the_saved_step(tmp_path, monkeypatch):
    ctx = synthetic_context(tmp_path)
    full = pretrain.pretrain_encoder(_method(), synthetic_context(tmp_path / "ref"))

    monkeypatch.setattr(pretrain, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every step
    saves = []
    real_save = pretrain._save

    def crash_after_step_two(work, step, *args):
        real_save(work, step, *args)
        saves.append(step)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "_save", crash_after_step_two)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain_encoder(_method(), ctx)
    entry = pretrain.cache_entry(_method(), ctx)
    assert (entry.work / CHECKPOINT_FILE).is_file() and not entry.folder.exists()

    resumed = pretrain.pretrain_encoder(_method(), ctx)
    assert saves == [1, 2, 3]  # steps 3 and 4 only were trained after the restart
    assert len(resumed.losses) == 4 and resumed.loss_every == 1
    assert resumed.losses[:2] == pytest.approx(full.losses[:2])
    # Same seed, same data, restored RNG and optimizer: the result equals an uninterrupted run.
    for key, value in full.weights.encoder.items():
        torch.testing.assert_close(resumed.weights.encoder[key], value, rtol=1e-4, atol=1e-5)
    assert not entry.work.exists()  # the work folder goes once the entry is published


def test_nan_loss_stops_with_a_reason(tmp_path):
    method = _method(lr=1e30)
    with pytest.raises(pretrain.PretrainFailed, match="loss became"):
        pretrain.pretrain_encoder(method, synthetic_context(tmp_path))
    assert not pretrain.cache_folder(method, synthetic_context(tmp_path)).exists()


def test_exported_encoder_loads_strictly_into_smp_and_changes_its_output(tmp_path):
    result = pretrain.pretrain_encoder(_method(), synthetic_context(tmp_path))
    state = load_file(str(result.folder / ENCODER_FILE))
    card = json.loads((result.folder / CARD_FILE).read_text())
    assert card["method"] == "simclr" and card["encoder"] == "resnet18" and len(card["losses"]) == 4
    assert card["steps"] == 4 and card["views_seen"] == 4 * 4 * 2
    assert card["scale"] == "native" and card["compute"]["device"] == "cpu"

    cfg = get_profile("smoke").finetune
    torch.manual_seed(0)
    random_model = build_segmenter(cfg.arch, cfg.encoder, 3).eval()
    torch.manual_seed(0)
    pretrained = build_segmenter(cfg.arch, cfg.encoder, 3, PretrainedWeights(state)).eval()
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(random_model(x), pretrained(x))

    encoder = smp.encoders.get_encoder("resnet18", weights=None)
    encoder.load_state_dict(state, strict=True)
    mismatched = smp.encoders.get_encoder("resnet34", weights=None)
    with pytest.raises(RuntimeError):
        mismatched.load_state_dict(state, strict=True)


def test_wrong_encoder_weights_are_an_error_not_a_random_init(tmp_path):
    from bench.core.errors import BenchError

    state = smp.encoders.get_encoder("resnet34", weights=None).state_dict()
    cfg = get_profile("smoke").finetune
    with pytest.raises(BenchError, match="refusing to fall back"):
        build_segmenter(cfg.arch, cfg.encoder, 3, PretrainedWeights(state))


def test_batches_are_distinct_images_or_an_even_repeat_of_a_small_pool():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        index = pretrain.sample_batch(10, 8, generator)
        assert len(set(index.tolist())) == 8 and int(index.max()) < 10
    for _ in range(20):  # an EBC-2-sized pool at batch 32: every image exactly 8 times
        index = pretrain.sample_batch(4, 32, generator)
        assert torch.bincount(index, minlength=4).tolist() == [8, 8, 8, 8]
    counts = torch.bincount(pretrain.sample_batch(3, 8, generator), minlength=3)
    assert sorted(counts.tolist()) == [2, 3, 3]


def test_losses_are_kept_as_means_of_equal_runs_of_steps():
    every, means = pretrain.loss_windows([float(i) for i in range(250)])
    assert every == 3 and len(means) == 84
    assert means[0] == 1.0 and means[-1] == 249.0  # the last run holds step 250 alone
