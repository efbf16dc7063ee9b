"""The shared pretraining loop: cache keys, resume, NaN handling, strict export into smp."""

from __future__ import annotations

import dataclasses
import json

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file

import bench.ssl.engine as pretrain
from bench.models.segmenter import build_segmenter
from bench.profiles import get_profile
from bench.ssl.registry import get_method
from tests.helpers.ssl import synthetic_context

TINY = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "view_size": 64, "pool_limit": 8}


def _method(**extra):
    return get_method("simclr")({**TINY, **extra})


def test_cache_hit_on_second_run_and_miss_when_a_keyed_field_changes(tmp_path):
    ctx = synthetic_context(tmp_path)
    first = pretrain.pretrain_encoder(_method(), ctx)
    second = pretrain.pretrain_encoder(_method(), ctx)
    assert not first.cached and second.cached
    assert second.folder == first.folder
    for key in first.state:
        assert torch.equal(first.state[key], second.state[key])

    base = pretrain.cache_folder(_method(), ctx)
    changed = [
        pretrain.cache_folder(_method(lr=0.01), ctx),
        pretrain.cache_folder(get_method("simclr")({**TINY, "temperature": 0.2}), ctx),
        pretrain.cache_folder(_method(), dataclasses.replace(ctx, seed=1)),
        pretrain.cache_folder(_method(), dataclasses.replace(ctx, encoder="resnet34")),
        pretrain.cache_folder(_method(), dataclasses.replace(ctx, init="imagenet")),
        pretrain.cache_folder(_method(), dataclasses.replace(ctx, profile="quick")),
        pretrain.cache_folder(get_method("matssl")(TINY), ctx),
    ]
    assert len({base, *changed}) == len(changed) + 1
    # The draw does not matter for label-free methods.
    assert pretrain.cache_folder(_method(), dataclasses.replace(ctx, draw=3)) == base


def test_resume_continues_from_the_saved_epoch(tmp_path, monkeypatch):
    ctx = synthetic_context(tmp_path)
    full = pretrain.pretrain_encoder(_method(epochs=3), synthetic_context(tmp_path / "ref"))

    saves = []
    real_save = pretrain._save_checkpoint

    def crash_after_first_epoch(folder, epoch, *args):
        real_save(folder, epoch, *args)
        saves.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "_save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain_encoder(_method(epochs=3), ctx)
    folder = pretrain.cache_folder(_method(epochs=3), ctx)
    assert (folder / pretrain.CHECKPOINT_FILE).is_file()
    assert not (folder / pretrain.ENCODER_FILE).exists()

    resumed = pretrain.pretrain_encoder(_method(epochs=3), ctx)
    assert saves == [1, 2, 3]  # epochs 2 and 3 only were trained after the restart
    assert len(resumed.losses) == 3
    assert resumed.losses[0] == pytest.approx(full.losses[0])
    # Same seed, same data, restored RNG and optimizer: the result equals an uninterrupted run.
    for key, value in full.state.items():
        torch.testing.assert_close(resumed.state[key], value, rtol=1e-4, atol=1e-5)
    assert not (folder / pretrain.CHECKPOINT_FILE).exists()


def test_nan_loss_stops_with_a_reason(tmp_path):
    method = _method(lr=1e30)
    with pytest.raises(pretrain.PretrainFailed, match="loss became"):
        pretrain.pretrain_encoder(method, synthetic_context(tmp_path))
    assert not (
        pretrain.cache_folder(method, synthetic_context(tmp_path)) / pretrain.ENCODER_FILE
    ).exists()


def test_exported_encoder_loads_strictly_into_smp_and_changes_its_output(tmp_path):
    result = pretrain.pretrain_encoder(_method(), synthetic_context(tmp_path))
    state = load_file(str(result.folder / pretrain.ENCODER_FILE))
    card = json.loads((result.folder / pretrain.CARD_FILE).read_text())
    assert card["method"] == "simclr" and card["encoder"] == "resnet18" and len(card["losses"]) == 2

    cfg = get_profile("smoke").finetune
    torch.manual_seed(0)
    random_model = build_segmenter(cfg.arch, cfg.encoder, 3).eval()
    torch.manual_seed(0)
    pretrained = build_segmenter(cfg.arch, cfg.encoder, 3, state).eval()
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
        build_segmenter(cfg.arch, cfg.encoder, 3, state)


def test_batches_have_no_repeated_image_when_the_pool_allows():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        index = pretrain.sample_batch(10, 8, generator)
        assert len(set(index.tolist())) == 8 and int(index.max()) < 10
    small = pretrain.sample_batch(3, 8, generator)
    assert len(small) == 8 and set(small.tolist()) <= {0, 1, 2}
