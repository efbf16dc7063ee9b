"""``--precision``: detection, resolution, the autocast state it sets, and a run that records it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
from sqlalchemy import create_engine, text

from bench.core import precision as prec
from bench.core.errors import BenchError
from bench.core.precision import cpuinfo_flags, fp32_matmul, resolve_precision
from bench.data.cards import load_card
from bench.data.images import LabeledImage
from bench.data.synthetic import generate_labeled
from bench.finetune.inference import evaluate, forward_logits, predict
from bench.models.encoders import build_encoder
from bench.models.segmenter import build_segmenter

CPU = torch.device("cpu")
CPUINFO = "processor\t: {i}\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\n"


def _cpuinfo(tmp_path: Path, *flags_per_cpu: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("".join(CPUINFO.format(i=i, flags=f) for i, f in enumerate(flags_per_cpu)))
    return path


def test_cpuinfo_flags_are_those_every_cpu_has(tmp_path):
    both = _cpuinfo(tmp_path, "fpu avx512f avx512_bf16 amx_bf16", "fpu avx512_bf16 amx_bf16")
    assert cpuinfo_flags(both) == {"fpu", "avx512_bf16", "amx_bf16"}
    assert cpuinfo_flags(_cpuinfo(tmp_path, "fpu avx2", "fpu avx2 avx512_bf16")) == {"fpu", "avx2"}
    assert cpuinfo_flags(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("units", "expected"), [("amx_bf16", "bf16"), ("avx512_bf16", "bf16"), (None, "fp32")]
)
def test_auto_follows_the_detected_cpu_units(monkeypatch, units, expected):
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: units)
    resolved = resolve_precision("auto", CPU)
    assert resolved.name == expected
    assert resolved.reason == (
        f"auto: CPU has {units}" if units else "auto: CPU has neither amx_bf16 nor avx512_bf16"
    )
    # Explicit choices do not depend on the detection.
    assert resolve_precision("fp32", CPU).name == "fp32"
    assert resolve_precision("bf16", CPU).name == "bf16"


def test_this_machines_detection_matches_its_cpuinfo():
    flags = cpuinfo_flags(Path("/proc/cpuinfo")) or set()
    fast = bool(flags & {"amx_bf16", "avx512_bf16"})
    assert (resolve_precision("auto", CPU).name == "bf16") == fast


def test_unknown_precision_and_bf16_on_a_gpu_without_it_are_user_errors(monkeypatch):
    with pytest.raises(BenchError, match="--precision fp16: choose one of auto, fp32, bf16"):
        resolve_precision("fp16", CPU)
    monkeypatch.setattr(prec, "bf16_support", lambda device: (False, "Old GPU has no native bf16"))
    with pytest.raises(BenchError, match="Old GPU has no native bf16; use --precision fp32"):
        resolve_precision("bf16", torch.device("cuda"))
    assert resolve_precision("auto", torch.device("cuda")).name == "fp32"


def test_fp32_and_bf16_set_the_autocast_state_and_memory_format():
    bf16, fp32 = resolve_precision("bf16", CPU), resolve_precision("fp32", CPU)
    with bf16.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        with fp32.autocast():  # fp32 switches an outer autocast off
            assert not torch.is_autocast_enabled("cpu")
    model = smp.Unet("resnet18", encoder_weights=None, classes=3)
    x = torch.randn(1, 3, 64, 64)
    assert bf16.input(x).is_contiguous(memory_format=torch.channels_last)
    assert fp32.input(x) is x
    conv = bf16.model(model).encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert conv.dtype == torch.float32  # autocast casts per op; the weights stay fp32


def test_forward_logits_runs_the_network_in_bf16_and_returns_fp32():
    model = smp.Unet("resnet18", encoder_weights=None, classes=3).eval()
    seen: list[torch.dtype] = []
    model.encoder.conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        low = forward_logits(model, x, resolve_precision("bf16", CPU))
        full = forward_logits(model, x, resolve_precision("fp32", CPU))
    assert seen == [torch.bfloat16, torch.float32]
    assert low.dtype == full.dtype == torch.float32
    assert (low.argmax(1) == full.argmax(1)).float().mean() > 0.9


def test_a_frozen_encoder_keeps_bf16_weights_with_equal_outputs_under_autocast():
    bf16, fp32 = resolve_precision("bf16", CPU), resolve_precision("fp32", CPU)
    encoder = bf16.model(build_encoder("resnet18")).eval().requires_grad_(False)
    frozen = bf16.frozen(copy.deepcopy(encoder))
    assert frozen.conv1.weight.dtype == torch.bfloat16
    assert frozen.bn1.weight.dtype == torch.float32  # BatchNorm keeps its fp32 parameters
    x = bf16.input(torch.randn(1, 3, 96, 128))
    with torch.no_grad(), bf16.autocast():
        expected, got = encoder(x), frozen(x)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert fp32.frozen(encoder).conv1.weight.dtype == torch.float32


def test_one_autocast_region_evaluates_like_one_region_per_image():
    """``evaluate`` enters autocast once for a whole image set (bf16 weight copies made once);
    its predictions equal those of ``predict`` image by image, each in its own region."""
    card = load_card("synthetic")
    images = [
        LabeledImage(f"s{i}", image, mask)
        for i, (image, mask) in enumerate(generate_labeled(3, (96, 160), seed=2))
    ]
    torch.manual_seed(0)
    bf16 = resolve_precision("bf16", CPU)
    model = bf16.model(build_segmenter("unet", "resnet18", card.num_classes, None)).eval()
    kept = {item.stem: None for item in images}
    evaluate(model, images, card, card.all_protocols()[:1], CPU, 0, kept, None, bf16)
    for item in images:
        alone = predict(model, item.image, CPU, 0, None, None, bf16)
        assert np.array_equal(kept[item.stem], alone)


def test_contrastive_similarities_stay_fp32_under_autocast():
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a.T).dtype == torch.bfloat16
        sims = fp32_matmul(a, a.T)
    assert sims.dtype == torch.float32
    torch.testing.assert_close(sims, a @ a.T)


@pytest.mark.parametrize("choice", ["fp32", "bf16"])
def test_run_precision_reaches_every_forward_pass_and_the_record(
    cli, tmp_path, tmp_store_url, monkeypatch, choice
):
    """``bench run --precision``: pretraining's encoder passes and fine-tuning/evaluation's model
    passes see the autocast state it names; the run's config (and so its hash) records it."""
    states: dict[str, set[bool]] = {"encoder": set(), "segmenter": set()}
    encoder_forward = ResNetEncoder.forward
    segmenter_forward = smp.Unet.forward

    def watch_encoder(self, *args, **kwargs):
        states["encoder"].add(torch.is_autocast_enabled("cpu"))
        return encoder_forward(self, *args, **kwargs)

    def watch_segmenter(self, *args, **kwargs):
        states["segmenter"].add(torch.is_autocast_enabled("cpu"))
        return segmenter_forward(self, *args, **kwargs)

    monkeypatch.setattr(ResNetEncoder, "forward", watch_encoder)
    monkeypatch.setattr(smp.Unet, "forward", watch_segmenter)
    argv = ["run", "--method", "simclr", "--dataset", "synthetic", "--profile", "smoke"]
    code, _, stderr = cli([*argv, "--device", "cpu", "--precision", choice])
    assert code == 0, stderr
    on = choice == "bf16"
    assert states == {"encoder": {on}, "segmenter": {on}}
    with create_engine(tmp_store_url).connect() as conn:
        rows = conn.execute(text("SELECT config, config_hash FROM runs")).all()
    config = json.loads(rows[0][0]) if isinstance(rows[0][0], str) else rows[0][0]
    assert config["precision"] == choice


def test_the_resolved_precision_is_in_the_config_hash(tmp_path):
    from bench.runner import RunEnv, RunSpec, prepare

    spec = RunSpec(method="simclr", dataset="synthetic", profile="smoke")
    runs = {
        name: prepare(
            spec,
            RunEnv(Path("."), None, CPU, tmp_path, precision=resolve_precision(name, CPU)),
        )
        for name in ("fp32", "bf16")
    }
    assert runs["fp32"].config["precision"] == "fp32"
    assert runs["bf16"].config["precision"] == "bf16"
    assert runs["fp32"].hash != runs["bf16"].hash
    assert runs["bf16"].ctx.precision == "bf16"  # the pretraining cache key follows it
