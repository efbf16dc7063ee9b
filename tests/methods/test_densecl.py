"""DenseCL: backbone-feature cell matching, the two queues, the dense loss and training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

import methods.densecl as densecl
from bench.core.errors import BenchError
from bench.data.cards import load_card
from bench.data.pool import load_pool
from bench.ssl.augment import ImagePool
from bench.ssl.engine import build_optimizer
from bench.ssl.method import EncoderContext
from methods.densecl import DenseCL, DenseCLModel, dense_info_nce, match_cells

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pool() -> ImagePool:
    card = load_card("synthetic")
    return ImagePool(load_pool(card, Path(".")), CPU)


def build(
    tmp_path: Path, profile: str = "smoke", **params
) -> tuple[DenseCLModel, torch.optim.Optimizer]:
    card = load_card("synthetic")
    ctx = EncoderContext(card, Path("."), "resnet18", "random", profile, 0, CPU, tmp_path)
    method = DenseCL(params)
    cfg = dataclasses.replace(method.engine_config("smoke"), lr=0.05, batch_size=8)
    torch.manual_seed(0)
    model = method.build_model(smp.encoders.get_encoder("resnet18", weights=None), ctx, cfg)
    model.train()
    return model, build_optimizer(cfg, model)


@pytest.mark.parametrize("shift", [(1, 2), (0, 1), (2, 0)])
def test_match_cells_finds_the_shifted_cell(shift):
    """The key map is the query map moved by ``shift`` cells, with new content coming in."""
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = 2, 64, 6, 7
    dy, dx = shift
    feat_q = torch.randn(b, c, h, w, generator=gen)
    # new content with a large norm: a dot-product match would pick it, a cosine match must not
    feat_k = 10 * torch.randn(b, c, h, w, generator=gen)
    scale = 0.1 + torch.rand(b, 1, h - dy, w - dx, generator=gen)
    feat_k[:, :, dy:, dx:] = feat_q[:, :, : h - dy, : w - dx] * scale
    index = match_cells(feat_q, feat_k)
    assert index.shape == (b, h * w) and index.dtype == torch.long
    for y in range(h - dy):
        for x in range(w - dx):
            assert index[:, y * w + x].tolist() == [(y + dy) * w + (x + dx)] * b


def test_match_cells_inverts_a_permutation():
    gen = torch.Generator().manual_seed(1)
    feat_q = torch.randn(3, 32, 4, 4, generator=gen)
    perm = torch.randperm(16, generator=gen)
    feat_k = feat_q.flatten(2)[:, :, perm].view_as(feat_q)  # key cell j holds query cell perm[j]
    assert torch.equal(match_cells(feat_q, feat_k), torch.argsort(perm).expand(3, -1))


def test_dense_info_nce_uses_the_given_key_cell():
    gen = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(2, 5, 16, generator=gen), dim=-1)
    perm = torch.randperm(5, generator=gen)
    k = q[:, perm]
    matched = torch.argsort(perm).expand(2, -1)
    negatives = F.normalize(torch.randn(16, 10, generator=gen), dim=0)
    loss = dense_info_nce(q, k, matched, negatives, 0.2)
    logits = torch.cat([torch.ones(2, 5, 1), q @ negatives], dim=-1) / 0.2
    expected = (torch.logsumexp(logits, dim=-1) - 1 / 0.2).mean()
    torch.testing.assert_close(loss, expected)
    same_index = torch.arange(5).expand(2, -1)
    assert dense_info_nce(q, k, same_index, negatives, 0.2) > loss


def test_queues_keep_size_and_normalisation(pool, tmp_path, monkeypatch):
    model, _ = build(tmp_path, queue_size=16)
    banks = {"global": model.global_criterion.memory_bank, "dense": model.dense_queue}
    state = model.state_dict()
    assert "global_criterion.memory_bank.bank" in state and "dense_queue.bank" in state
    views = []
    real_views = densecl.make_views

    def recording_views(*args):
        batch = real_views(*args)
        views.append(batch.images)
        return batch

    monkeypatch.setattr(densecl, "make_views", recording_views)
    gen = torch.Generator().manual_seed(0)
    initial = {k: b.bank.clone() for k, b in banks.items()}
    for b in banks.values():
        assert b.bank.shape == (16, 128) and int(b.bank_ptr) == 0
        torch.testing.assert_close(b.bank.norm(dim=1), torch.ones(16))

    model.training_loss(pool, torch.arange(8), gen)
    for k, b in banks.items():
        assert b.bank.shape == (16, 128) and int(b.bank_ptr) == 8
        torch.testing.assert_close(b.bank.norm(dim=1), torch.ones(16))
        assert not torch.equal(b.bank[:8], initial[k][:8])
        assert torch.equal(b.bank[8:], initial[k][8:])
    # the enqueued rows are this batch's keys: global projection, and mean dense projection
    with torch.no_grad():
        feat_k = model.key_encoder(views[1])[-1]
        k_global, k_dense = model._heads(feat_k, model.key_global_head, model.key_dense_head)
    torch.testing.assert_close(banks["global"].bank[:8], F.normalize(k_global, dim=1))
    torch.testing.assert_close(banks["dense"].bank[:8], F.normalize(k_dense.mean(dim=1), dim=1))

    model.training_loss(pool, torch.arange(8, 16), gen)
    for k, b in banks.items():
        assert b.bank.shape == (16, 128) and int(b.bank_ptr) == 0  # wrapped around
        assert not torch.equal(b.bank[8:], initial[k][8:])
        torch.testing.assert_close(b.bank.norm(dim=1), torch.ones(16))
    filled = {k: b.bank.clone() for k, b in banks.items()}
    with torch.no_grad():  # evaluation passes leave the queues alone
        model.training_loss(pool, torch.arange(8), gen)
    for k, b in banks.items():
        assert int(b.bank_ptr) == 0 and torch.equal(b.bank, filled[k])


def test_dense_loss_uses_backbone_matches(pool, tmp_path, monkeypatch):
    model, _ = build(tmp_path)
    seen: dict[str, torch.Tensor] = {}
    real_match, real_loss = densecl.match_cells, densecl.dense_info_nce

    def recording_match(feat_q, feat_k):
        seen["feat_q"], seen["feat_k"] = feat_q, feat_k
        seen["real"] = real_match(feat_q, feat_k)
        seen["given"] = seen["real"].flip(-1)  # a different, known assignment
        return seen["given"]

    def recording_loss(q_grid, k_grid, index, negatives, temperature):
        seen["index"], seen["k_grid"] = index, k_grid
        return real_loss(q_grid, k_grid, index, negatives, temperature)

    monkeypatch.setattr(densecl, "match_cells", recording_match)
    monkeypatch.setattr(densecl, "dense_info_nce", recording_loss)
    model.training_loss(pool, torch.arange(8), torch.Generator().manual_seed(0))
    channels = model.encoder.out_channels[-1]
    assert seen["feat_q"].shape == seen["feat_k"].shape == (8, channels, 2, 2)  # backbone maps
    assert seen["k_grid"].shape == (8, 4, 128)  # projected cells are what gets contrasted
    assert torch.equal(seen["index"], seen["given"])
    assert seen["real"].shape == (8, 4)


def test_key_network_is_a_momentum_copy(pool, tmp_path):
    model, optimizer = build(tmp_path)
    name = "layer4.1.conv2.weight"
    online = dict(model.encoder.named_parameters())[name]
    key = dict(model.key_encoder.named_parameters())[name]
    assert torch.equal(online, key) and not key.requires_grad
    loss = model.training_loss(pool, torch.arange(8), torch.Generator().manual_seed(0))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    before = key.clone()
    model.after_step(0.5)
    torch.testing.assert_close(key, 0.999 * before + 0.001 * online.detach())
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not {id(p) for p in model.key_encoder.parameters()} & trained
    assert {k for k in model.state_dict() if k.startswith("encoder.")} == {
        f"encoder.{k}" for k in model.encoder.state_dict()
    }


def test_queue_size_follows_the_profile(tmp_path):
    assert build(tmp_path)[0].dense_queue.bank.shape[0] == 256
    model, _ = build(tmp_path, profile="standard")
    assert model.dense_queue.bank.shape == (4096, 128)
    assert model.global_criterion.memory_bank.bank.shape == (4096, 128)
    with pytest.raises(BenchError, match="queue_size"):
        build(tmp_path, queue_size=4)
