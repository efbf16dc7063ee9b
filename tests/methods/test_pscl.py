"""PSCL: cell correspondence, labeled sampling, template matching, class-aware loss, training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder

from bench.core.errors import BenchError
from bench.data.cards import load_card
from bench.data.images import LabeledImage
from bench.data.pool import load_pool
from bench.data.sources import load_labeled
from bench.data.synthetic import generate_labeled
from bench.ssl.augment import ImagePool
from bench.ssl.config import PretrainConfig
from bench.ssl.method import EncoderContext
from bench.ssl.registry import get_method
from methods.pscl import (
    PSCLModel,
    PSCLParams,
    SubView,
    cell_fractions,
    correspond,
    match_templates,
    negative_mask,
    patch_contrast,
    pscl_view,
    sample_labeled,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: much faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def card():
    return load_card("synthetic")


@pytest.fixture(scope="module")
def shot(card):
    return load_labeled(card, Path("."), ["train_000"])[0]


@pytest.fixture(scope="module")
def pool(card):
    return ImagePool(load_pool(card, Path(".")), CPU)


def subview(sub=(0.0, 0.0, 1.0, 1.0), hflip=False, vflip=False, rot=0) -> SubView:
    return SubView(
        torch.tensor([sub], dtype=torch.float32),
        torch.tensor([hflip]),
        torch.tensor([vflip]),
        torch.tensor([rot]),
    )


def context(card, profile: str, cache: Path, **kw) -> EncoderContext:
    return EncoderContext(card, Path("."), "resnet18", "random", profile, 0, CPU, cache, **kw)


def model_for(shots, num_classes, view_size=64, **params) -> PSCLModel:
    torch.manual_seed(0)
    encoder = get_encoder("resnet18", in_channels=3, depth=5, weights=None)
    p = PSCLParams(**params)
    view = pscl_view(p, PretrainConfig(view_size=view_size, crop="image"))
    ids = list(range(100, 100 + len(shots)))
    return PSCLModel(encoder, shots, ids, num_classes, p, view, "separate", CPU)


# ---------------------------------------------------------------------------------------- geometry


def test_correspond_hand_checked_cases():
    def idx(view, grid):
        return correspond(view, grid)[0][0].tolist()

    assert idx(subview(), 3) == list(range(9))
    # horizontal flip: view-2 (r, c) shows view-1 (r, G-1-c); vertical flip: (G-1-r, c)
    assert idx(subview(hflip=True), 2) == [1, 0, 3, 2]
    assert idx(subview(vflip=True), 2) == [2, 3, 0, 1]
    # rot90 (counter-clockwise) of [[0, 1], [2, 3]] is [[1, 3], [0, 2]]; twice: [[3, 2], [1, 0]]
    assert idx(subview(rot=1), 2) == [1, 3, 0, 2]
    assert idx(subview(rot=2), 2) == [3, 2, 1, 0]
    assert idx(subview(rot=3), 2) == [2, 0, 3, 1]
    # bottom-right quarter of view 1 on a 4×4 grid: view-2 rows/cols 0,1,2,3 → view-1 2,2,3,3
    index, keep = correspond(subview((0.5, 0.5, 0.5, 0.5)), 4)
    assert index[0].view(4, 4).tolist() == [
        [10, 10, 11, 11],
        [10, 10, 11, 11],
        [14, 14, 15, 15],
        [14, 14, 15, 15],
    ]
    # one view-2 cell per view-1 cell (equidistant ties → the lower index)
    assert torch.nonzero(keep[0]).flatten().tolist() == [0, 2, 8, 10]
    # top-left quarter, then h-flip: view-2 (r, c) → crop (r, 3-c) → view-1 (r//2, (3-c)//2)
    index, keep = correspond(subview((0.0, 0.0, 0.5, 0.5), hflip=True), 4)
    expected = [(r // 2) * 4 + (3 - c) // 2 for r in range(4) for c in range(4)]
    assert index[0].tolist() == expected
    assert sorted(index[0][keep[0]].tolist()) == [0, 1, 4, 5]


def test_views_agree_with_correspond(card, shot):
    """Ramp images through the real view pipeline: matched cells hold the same image position."""
    size = 128
    ramp = np.tile((np.arange(size) * 2).astype(np.uint8), (size, 1))
    pool = ImagePool([ramp, ramp.T.copy()], CPU)
    model = model_for([LabeledImage("ramp", ramp.T.copy(), shot.mask)], 3, jitter=0.0)
    generator = torch.Generator().manual_seed(3)
    index = torch.tensor([0, 1, 0, 1, 0, 1])
    x1, x2, _shots, box2, view = model.make_views(pool, index, generator)
    assert not torch.equal(view.rot90, torch.zeros_like(view.rot90))  # geometry is exercised
    grid = 16
    v1 = F.avg_pool2d(x1[:, :1], 64 // grid).flatten(1)
    v2 = F.avg_pool2d(x2[:, :1], 64 // grid).flatten(1)
    index1, keep = correspond(view, grid)
    matched = v1.gather(1, index1)
    # tolerance: one view-1 cell's span of the ramp (2 levels / px), in normalised units
    box1_side = (box2[:, 2] - box2[:, 0]) / view.sub[:, 3]
    tol = (box1_side / grid * 2 / 255 / 0.229)[:, None]
    assert ((v2 - matched).abs() <= tol).all()
    assert ((v2 - matched).abs() <= tol / 2 + 0.02)[keep].float().mean() > 0.9


# ---------------------------------------------------------------------------------------- sampling


def _block_fractions(mask: np.ndarray, grid: int, num_classes: int) -> np.ndarray:
    cell = mask.shape[0] // grid
    blocks = mask.reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3).reshape(grid, grid, -1)
    return np.stack([(blocks == c).mean(-1) for c in range(num_classes)])  # C×G×G


@pytest.mark.parametrize("rot", [0, 1])
def test_labeled_sampler_against_mask(shot, rot):
    mask, grid, k = shot.mask, 16, 4
    masks = torch.from_numpy(mask)[None, None]
    box = torch.tensor([[0.0, 0.0, mask.shape[1], mask.shape[0]]])
    frac = cell_fractions(masks, 3, box, subview(rot=rot), grid)
    truth = np.rot90(_block_fractions(mask, grid, 3), rot, axes=(1, 2)).reshape(3, -1)
    assert np.allclose(frac[0].numpy(), truth, atol=1e-5)
    img, cell, cls, present = sample_labeled(
        frac, torch.ones(1, grid * grid, dtype=torch.bool), k, 0.5, torch.Generator().manual_seed(0)
    )
    assert (img == 0).all() and len(set(cell.tolist())) == len(cell)
    eligible = (truth >= 0.5).sum(1)
    assert present.tolist() == [bool(n >= k) for n in eligible]
    for c in range(3):
        assert int((cls == c).sum()) == (k if eligible[c] >= k else 0)
    assert (truth[cls.numpy(), cell.numpy()] >= 0.5).all()  # each cell is mostly its class


def test_sampler_skips_rare_class_and_never_reuses_cells():
    # 12 cells, 3 classes: class 0 in 6 cells, class 1 in 5 (cell 5 is half 0, half 1), class 2 in 2
    frac = torch.zeros(1, 3, 12)
    frac[0, 0, 0:6] = 1.0
    frac[0, 1, 5:10] = 1.0
    frac[0, :2, 5] = 0.5
    frac[0, 2, 10:12] = 1.0
    for seed in range(5):
        _img, cell, cls, present = sample_labeled(
            frac, torch.ones(1, 12, dtype=torch.bool), 4, 0.5, torch.Generator().manual_seed(seed)
        )
        assert present.tolist() == [True, True, False]
        assert (cls == 0).sum() == 4 and (cls == 1).sum() == 4 and len(cls) == 8
        assert len(set(cell.tolist())) == 8
        assert (frac[0, cls, cell] >= 0.5).all()
    # a class that needs the unusable cells is skipped too
    candidates = torch.ones(1, 12, dtype=torch.bool)
    candidates[0, 6:] = False
    _, _, cls, present = sample_labeled(frac, candidates, 4, 0.5, torch.Generator().manual_seed(0))
    assert present.tolist() == [True, False, False] and cls.tolist() == [0] * 4


def test_matching_finds_known_cells_without_reuse():
    generator = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(6, 32, generator=generator), dim=1)
    templates = torch.cat([protos, protos[:2]])  # 8 templates, two duplicated
    cells = F.normalize(torch.randn(2, 40, 32, generator=generator), dim=2) * 0.3
    where = torch.stack([torch.randperm(40, generator=generator)[:8] for _ in range(2)])
    for b in range(2):
        cells[b, where[b]] = templates + 0.01 * torch.randn(8, 32, generator=generator)
    sim = torch.einsum("bnd,md->bmn", F.normalize(cells, dim=2), templates)
    assign = match_templates(sim)
    for b in range(2):
        assert assign[b, 2:6].tolist() == where[b, 2:6].tolist()
        # the duplicated templates take the two copies of their prototype, one each
        assert set(assign[b, [0, 6]].tolist()) == set(where[b, [0, 6]].tolist())
        assert set(assign[b, [1, 7]].tolist()) == set(where[b, [1, 7]].tolist())


def test_matching_random_properties():
    generator = torch.Generator().manual_seed(1)
    sim = torch.randn(3, 12, 20, generator=generator)
    sim[:, :, :2] = -torch.inf  # unusable cells
    assign = match_templates(sim)
    for b in range(3):
        chosen = assign[b].tolist()
        assert len(set(chosen)) == 12 and min(chosen) >= 2
        free = [j for j in range(20) if j not in chosen and j >= 2]
        got = sim[b, torch.arange(12), assign[b]]
        # greedy: every template's cell beats every cell that stayed free
        assert (got[:, None] >= sim[b][:, free]).all()
    # fewer usable cells than templates: the rest get -1, still no reuse
    sim = torch.randn(1, 6, 8, generator=generator)
    sim[:, :, 4:] = -torch.inf
    assign = match_templates(sim)[0]
    assert (assign >= 0).sum() == 4 and len(set(assign[assign >= 0].tolist())) == 4
    assert (assign[assign >= 0] < 4).all()


# ---------------------------------------------------------------------------------------- loss


def test_negative_mask_excludes_same_class_cells():
    cls = torch.tensor([0, 0, 1, 2, 1])
    p = len(cls)
    keep = negative_mask(cls)
    both = torch.cat([cls, cls])
    for i in range(2 * p):
        pos = (i + p) % (2 * p)
        for j in range(2 * p):
            if j == pos:
                assert keep[i, j]
            else:
                assert keep[i, j] == (both[i] != both[j])


def test_patch_contrast_matches_explicit_formula():
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    cls = torch.tensor([0, 0, 1, 2, 1])
    z = F.normalize(torch.cat([q, k]), dim=1)
    both = torch.cat([cls, cls]).tolist()
    total = 0.0
    for i in range(10):
        pos = (i + 5) % 10
        negs = [j for j in range(10) if both[j] != both[i]]
        terms = [math.exp(float(z[i] @ z[j]) / 0.5) for j in [pos, *negs]]
        total += -math.log(terms[0] / sum(terms))
    assert math.isclose(float(patch_contrast(q, k, cls, 0.5)), total / 10, rel_tol=1e-5)


# ---------------------------------------------------------------------------------------- training


def test_two_classes(pool):
    image, mask = generate_labeled(1, 128, seed=0, num_classes=2)[0]
    model = model_for([LabeledImage("two", image, mask)], 2)
    loss = model.training_loss(pool, torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(len(c) == 2 for c in model.last_counts)
    assert sum(int((c > 0).all()) for c in model.last_counts) >= 1  # both classes contrasted


def test_five_classes_with_one_too_rare(pool):
    # 16-px blocks of classes 0..3 (every crop sees all four); class 4: 2×2 specks, never ≥ half
    # a cell (cells are ≥ 4 px here) and far fewer than K cells anyway
    blocks = np.arange(8)[:, None] + np.arange(8)[None, :]
    mask = np.kron(blocks % 4, np.ones((16, 16), dtype=np.int64)).astype(np.uint8)
    mask[8:10, 8:10] = mask[40:42, 72:74] = 4
    image = (mask * 50 + 20).astype(np.uint8)
    model = model_for([LabeledImage("five", image, mask)], 5, labeled_per_batch=0)
    loss = model.training_loss(pool, torch.tensor([2, 3]), torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(loss.item())
    counts = torch.stack(model.last_counts)  # scales × classes
    assert (counts[:, 4] == 0).all()  # skipped explicitly, not filled by other classes
    fine = counts[-1]
    k = model.samples_at(len(model.last_counts) - 1)
    # at the finest scale: K per present class from the shot + K per class from each image
    assert (fine[fine > 0] == 3 * k).all() and (fine > 0).sum() >= 3


def test_method_registration_and_checks(card, shot):
    method = get_method("pscl")()
    assert method.uses_labels
    ctx = EncoderContext(
        card=card,
        data_root=Path("."),
        encoder="resnet18",
        init="random",
        profile="smoke",
        seed=0,
        device=CPU,
        cache_dir=Path("/tmp"),
        shots=[shot],
        draw=2,
    )
    config = method.pretrain_config(ctx)
    assert config["shots"] == ["train_000"] and config["draw"] == 2
    cfg = method.engine_config("smoke")
    assert cfg.optimizer == "adam" and cfg.view_size == 64 and cfg.batch_size == 4
    seed = get_method("pscl")().engine_config("pscl-paper")
    assert (seed.lr, seed.batch_size, seed.steps, seed.view_size) == (1e-4, 8, 4800, 384)
    assert (seed.optimizer, seed.weight_decay, seed.schedule) == ("adam", 0.0, "constant")
    encoder = get_encoder("resnet18", in_channels=3, depth=5, weights=None)
    with pytest.raises(BenchError, match="shots"):
        method.build_model(encoder, EncoderContext(**{**ctx.__dict__, "shots": []}), cfg)
    bad = get_method("pscl")({"view_size": 72})
    with pytest.raises(BenchError, match="multiple of 16"):
        bad.build_model(encoder, ctx, bad.engine_config("smoke"))
    whole = get_method("pscl")({"view_size": 80, "network": "whole"})
    with pytest.raises(BenchError, match="multiple of 32"):
        whole.build_model(encoder, ctx, whole.engine_config("smoke"))
    plusplus = EncoderContext(**{**ctx.__dict__, "arch": "unetplusplus"})
    with pytest.raises(BenchError, match="network=encoder"):
        get_method("pscl")({"network": "whole"}).build_model(encoder, plusplus, cfg)


def test_network_is_whole_in_pscl_paper_and_recorded(card, shot):
    ctx = context(card, "pscl-paper", Path("/tmp"), shots=[shot])
    method = get_method("pscl")()
    assert method.network("pscl-paper") == "whole" and method.network("standard") == "encoder"
    config = method.pretrain_config(ctx)
    assert config["params"]["network"] == "whole" and config["arch"] == "unet"
    quick = method.pretrain_config(EncoderContext(**{**ctx.__dict__, "profile": "quick"}))
    assert quick["params"]["network"] == "encoder" and "arch" not in quick
    assert get_method("pscl")({"network": "encoder"}).network("pscl-paper") == "encoder"


def test_a_shot_that_is_also_a_pool_image_keeps_its_id(card, shot):
    names = ("train_005", "train_000", "train_009")
    ctx = context(card, "smoke", Path("/tmp"), shots=[shot], pool_names=names)
    method = get_method("pscl")()
    encoder = get_encoder("resnet18", in_channels=3, depth=5, weights=None)
    model = method.build_model(encoder, ctx, method.engine_config("smoke"))
    assert model.shot_pool.ids.tolist() == [1]  # train_000 is pool image 1
    apart = EncoderContext(**{**ctx.__dict__, "pool_names": ("unlabeled/a.png",)})
    model = method.build_model(encoder, apart, method.engine_config("smoke"))
    assert model.shot_pool.ids.tolist() == [-1]  # not a pool image: an id no pool image has


def test_whole_network_pretrains_decoder_maps_at_strides_4_2_1(pool, shot):
    torch.manual_seed(0)
    segmenter = smp.Unet("resnet18", encoder_weights=None, classes=3)
    p = PSCLParams(network="whole")
    view = pscl_view(p, PretrainConfig(view_size=64, crop="image"))
    encoder, decoder = segmenter.encoder, segmenter.decoder
    model = PSCLModel(encoder, [shot], [100], 3, p, view, "separate", CPU, decoder, "unet")
    top, maps = model.features(torch.randn(2, 3, 64, 64))
    assert top.shape[-2:] == (2, 2)  # image level: the pooled last encoder stage
    assert [m.shape[1:] for m in maps] == [(64, 16, 16), (32, 32, 32), (16, 64, 64)]
    before = {k: v.clone() for k, v in segmenter.decoder.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model.training_loss(pool, torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    loss.backward()
    optimizer.step()
    assert len(model.last_counts) == 3
    changed = [
        k for k, v in segmenter.decoder.state_dict().items() if not torch.equal(v, before[k])
    ]
    assert changed  # the decoder is trained


def test_pscls_exported_segmenter_loads_with_its_decoder(tmp_path, card, shot):
    """Through the engine and its cache: every exported tensor, encoder and decoder, is in the
    fine-tuning segmenter after loading; the head starts random."""
    from bench.models.segmenter import build_segmenter
    from bench.ssl.cache import DECODER_FILE, BadEntry, verify
    from bench.ssl.engine import cache_entry, encoder_for

    ctx = context(card, "smoke", tmp_path, shots=[shot], arch="unet")
    outcome = encoder_for(get_method("pscl")({"network": "whole"}), ctx)
    weights = outcome.weights
    assert weights.parts == ("encoder", "decoder") and weights.arch == "unet"
    assert outcome.info["pretrained_parts"] == ["encoder", "decoder"]
    model = build_segmenter("unet", "resnet18", 3, weights)
    for part, state in (("encoder", weights.encoder), ("decoder", weights.decoder)):
        loaded = getattr(model, part).state_dict()
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[k], v) for k, v in state.items()), part
    random = smp.Unet("resnet18", encoder_weights=None, classes=3).decoder.state_dict()
    assert any(not torch.equal(random[k], v) for k, v in weights.decoder.items())
    again = encoder_for(get_method("pscl")({"network": "whole"}), ctx)  # from the cache
    assert again.info["pretrain_cached"]
    assert all(torch.equal(again.weights.decoder[k], v) for k, v in weights.decoder.items())
    with pytest.raises(BenchError, match="unet decoder"):
        build_segmenter("unetplusplus", "resnet18", 3, weights)
    entry = cache_entry(get_method("pscl")({"network": "whole"}), ctx)
    decoder = entry.folder / DECODER_FILE
    decoder.write_bytes(decoder.read_bytes()[:100])
    with pytest.raises(BadEntry, match=r"decoder\.safetensors does not match the checksum"):
        verify(entry.folder, entry.expected)
