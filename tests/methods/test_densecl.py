"""DenseCL: backbone-feature cell matching, the two queues (sized to the pool, never contrasting a
query with a key of its own image), the dense loss and training."""

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
from bench.ssl.engine import build_optimizer, sample_batch
from bench.ssl.method import EncoderContext
from methods.densecl import DenseCL, DenseCLModel, dense_positives, match_cells

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pool() -> ImagePool:
    card = load_card("synthetic")
    return ImagePool(load_pool(card, Path(".")), CPU)


def build(
    tmp_path: Path, profile: str = "smoke", pool_size: int = 16, **params
) -> tuple[DenseCLModel, torch.optim.Optimizer]:
    card = load_card("synthetic")
    ctx = EncoderContext(card, Path("."), "resnet18", "random", profile, 0, CPU, tmp_path)
    ctx = dataclasses.replace(ctx, pool_names=tuple(f"unlabeled/{i}" for i in range(pool_size)))
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


def test_dense_positives_are_the_matched_key_cells():
    gen = torch.Generator().manual_seed(2)
    k = torch.randn(2, 5, 16, generator=gen)
    perm = torch.randperm(5, generator=gen)
    index = perm.expand(2, -1)
    assert torch.equal(dense_positives(k, index), k[:, perm])


def test_queues_keep_size_and_normalisation(pool, tmp_path, monkeypatch):
    model, _ = build(tmp_path, queue_size=16)
    banks = {"global": model.global_queue, "dense": model.dense_queue}
    state = model.state_dict()
    assert {"global_queue.keys", "global_queue.ids", "dense_queue.ptr"} <= set(state)
    views = []
    real_views = densecl.make_views

    def recording_views(*args):
        batch = real_views(*args)
        views.append(batch.images)
        return batch

    monkeypatch.setattr(densecl, "make_views", recording_views)
    gen = torch.Generator().manual_seed(0)
    initial = {k: b.keys.clone() for k, b in banks.items()}
    for b in banks.values():
        assert b.keys.shape == (16, 128) and int(b.ptr) == 0 and (b.ids == -1).all()
        torch.testing.assert_close(b.keys.norm(dim=1), torch.ones(16))

    model.training_loss(pool, torch.arange(8), gen)
    for k, b in banks.items():
        assert b.keys.shape == (16, 128) and int(b.ptr) == 8
        torch.testing.assert_close(b.keys.norm(dim=1), torch.ones(16))
        assert not torch.equal(b.keys[:8], initial[k][:8])
        assert torch.equal(b.keys[8:], initial[k][8:])
        assert b.ids[:8].tolist() == list(range(8)) and (b.ids[8:] == -1).all()
    # the enqueued rows are this batch's keys: global projection, and mean dense projection
    with torch.no_grad():
        feat_k = model.key_encoder(views[1])[-1]
        k_global, k_dense = model._heads(feat_k, model.key_global_head, model.key_dense_head)
    torch.testing.assert_close(banks["global"].keys[:8], F.normalize(k_global, dim=1))
    torch.testing.assert_close(banks["dense"].keys[:8], F.normalize(k_dense.mean(dim=1), dim=1))

    model.training_loss(pool, torch.arange(8, 16), gen)
    for k, b in banks.items():
        assert b.keys.shape == (16, 128) and int(b.ptr) == 0  # wrapped around
        assert not torch.equal(b.keys[8:], initial[k][8:])
        torch.testing.assert_close(b.keys.norm(dim=1), torch.ones(16))
    filled = {k: b.keys.clone() for k, b in banks.items()}
    with torch.no_grad():  # evaluation passes leave the queues alone
        model.training_loss(pool, torch.arange(8), gen)
    for k, b in banks.items():
        assert int(b.ptr) == 0 and torch.equal(b.keys, filled[k])


def test_dense_loss_uses_backbone_matches(pool, tmp_path, monkeypatch):
    model, _ = build(tmp_path)
    seen: dict[str, torch.Tensor] = {}
    real_match, real_positives = densecl.match_cells, densecl.dense_positives

    def recording_match(feat_q, feat_k):
        seen["feat_q"], seen["feat_k"] = feat_q, feat_k
        seen["real"] = real_match(feat_q, feat_k)
        seen["given"] = seen["real"].flip(-1)  # a different, known assignment
        return seen["given"]

    def recording_positives(k_grid, index):
        seen["index"], seen["k_grid"] = index, k_grid
        return real_positives(k_grid, index)

    monkeypatch.setattr(densecl, "match_cells", recording_match)
    monkeypatch.setattr(densecl, "dense_positives", recording_positives)
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


def test_queues_are_sized_to_the_pool(tmp_path):
    assert build(tmp_path, pool_size=164)[0].dense_queue.keys.shape == (164, 128)
    model, _ = build(tmp_path, pool_size=4)  # a pool smaller than a batch: one batch of keys
    assert model.global_queue.keys.shape == (8, 128) and model.dense_queue.keys.shape == (8, 128)
    assert build(tmp_path, pool_size=4, queue_size=32)[0].global_queue.keys.shape[0] == 32
    with pytest.raises(BenchError, match="queue_size"):
        build(tmp_path, queue_size=4)


def test_the_queue_never_gives_a_query_a_key_of_its_own_image(pool, tmp_path, monkeypatch):
    """A pool of 4 images at batch 8 (every image twice): once the queues hold keys of every
    image, both losses equal InfoNCE computed by hand over the keys of the other images only."""
    small = ImagePool([pool.data[i, 0].numpy() for i in range(4)], CPU)
    model, optimizer = build(tmp_path, pool_size=4, queue_size=16)
    real = densecl.queue_info_nce
    own_keys_seen = []

    def checked(q, k, queue, queue_ids, ids, temperature):
        got = real(q, k, queue, queue_ids, ids, temperature)
        rows = q if q.dim() == 3 else q[:, None]
        positives = k if k.dim() == 3 else k[:, None]
        terms = []
        for b in range(len(ids)):
            others = queue[queue_ids != ids[b]]
            pos = (rows[b] * positives[b]).sum(-1, keepdim=True)
            logits = torch.cat([pos, rows[b] @ others.T], dim=1) / temperature
            labels = torch.zeros(len(logits), dtype=torch.long)
            terms.append(F.cross_entropy(logits, labels, reduction="none"))
        torch.testing.assert_close(got, torch.cat(terms).mean())
        own_keys_seen.append(bool((ids[:, None] == queue_ids[None, :]).any(dim=1).all()))
        return got

    monkeypatch.setattr(densecl, "queue_info_nce", checked)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss = model.training_loss(small, sample_batch(4, 8, gen), gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert set(model.global_queue.ids.tolist()) == {0, 1, 2, 3}
    assert own_keys_seen[-1]  # every query met keys of its own image in the queue: left out
