"""MatSSL: gates per stage, ablations, and a loss that falls."""

from __future__ import annotations

import torch
from segmentation_models_pytorch.encoders import get_encoder

from bench.ssl.registry import get_method
from methods.matssl import MatSSLModel
from tests.helpers.ssl import synthetic_context, synthetic_pool


def _model(tmp_path, encoder="resnet50", **params) -> MatSSLModel:
    method = get_method("matssl")(params)
    ctx = synthetic_context(tmp_path, encoder=encoder)
    return method.build_model(
        get_encoder(encoder, weights=None), ctx, method.engine_config("smoke")
    )


def test_gates_per_stage_with_resnet50_sizes_initialised_to_one(tmp_path):
    model = _model(tmp_path)
    sizes = [g.shape[0] for g in model.fusion.gates]
    assert sizes == [256, 512, 1024, 2048]
    assert model.fusion.out_dim == 3840
    assert model.head.layers[0].in_features == 3840
    assert all(torch.equal(g.data, torch.ones_like(g)) for g in model.fusion.gates)
    # The projection head ends with BatchNorm on its 128-d output, as in the seed.
    assert isinstance(model.head.layers[-1], torch.nn.BatchNorm1d)
    assert model.head.layers[-1].num_features == 128


def test_gates_receive_gradients(tmp_path):
    model = _model(tmp_path, encoder="resnet18")
    loss = model.training_loss(synthetic_pool(8), torch.arange(4), torch.Generator().manual_seed(0))
    loss.backward()
    for gate in model.fusion.gates:
        assert gate.grad is not None and gate.grad.abs().sum() > 0


def test_last_stage_ablation_builds_2048_input(tmp_path):
    model = _model(tmp_path, stages="last")
    assert model.fusion.out_dim == 2048
    assert [g.shape[0] for g in model.fusion.gates] == [2048]


def test_ungated_ablation_has_no_gates(tmp_path):
    model = _model(tmp_path, gated="false")
    assert model.fusion.gates is None and model.fusion.out_dim == 3840


def test_temperature_default_is_seed_value():
    assert get_method("matssl")().params.temperature == 0.07
