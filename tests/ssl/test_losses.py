"""Contrastive losses without false negatives: same-image pairs are left out of denominators."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss

from bench.ssl.engine import sample_batch
from bench.ssl.losses import nt_xent, queue_info_nce


def _explicit_nt_xent(z1: torch.Tensor, z2: torch.Tensor, ids: list[int], tau: float) -> float:
    """Row i: positive = the other view of i; denominator = the positive and every view of an
    image with another id."""
    n = len(ids)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    both = ids + ids
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        negatives = [j for j in range(2 * n) if both[j] != both[i]]
        terms = [math.exp(float(z[i] @ z[j]) / tau) for j in [pos, *negatives]]
        total += -math.log(terms[0] / sum(terms))
    return total / (2 * n)


def test_nt_xent_on_distinct_images_is_lightlys():
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 16, generator=gen), torch.randn(6, 16, generator=gen)
    expected = NTXentLoss(temperature=0.5)(z1, z2)
    torch.testing.assert_close(nt_xent(z1, z2, 0.5), expected)
    torch.testing.assert_close(nt_xent(z1, z2, 0.5, torch.arange(6) * 7), expected)


def test_an_ebc2_sized_pool_never_has_two_crops_of_one_image_as_negatives():
    """4 images at batch 32: every image 8 times in the batch; the loss equals the hand-computed
    NT-Xent whose denominators hold views of the 3 other images only."""
    gen = torch.Generator().manual_seed(1)
    index = sample_batch(4, 32, gen)
    assert torch.bincount(index, minlength=4).tolist() == [8] * 4
    z1, z2 = torch.randn(32, 8, generator=gen), torch.randn(32, 8, generator=gen)
    loss = nt_xent(z1, z2, 0.5, index)
    assert math.isclose(float(loss), _explicit_nt_xent(z1, z2, index.tolist(), 0.5), rel_tol=1e-5)
    # the plain loss (copies as negatives) differs: the test would see a false negative
    assert not math.isclose(float(loss), float(nt_xent(z1, z2, 0.5)), rel_tol=1e-3)


def test_queue_info_nce_leaves_out_keys_of_the_querys_image():
    gen = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(3, 8, generator=gen), dim=1)
    k = F.normalize(torch.randn(3, 8, generator=gen), dim=1)
    queue = F.normalize(torch.randn(5, 8, generator=gen), dim=1)
    queue_ids = torch.tensor([0, 1, 2, 0, -1])
    ids = torch.tensor([0, 1, 2])
    tau = 0.2
    total = 0.0
    for b in range(3):
        negatives = [j for j in range(5) if int(queue_ids[j]) != b]
        terms = [math.exp(float(q[b] @ k[b]) / tau)]
        terms += [math.exp(float(q[b] @ queue[j]) / tau) for j in negatives]
        total += -math.log(terms[0] / sum(terms))
    loss = queue_info_nce(q, k, queue, queue_ids, ids, tau)
    assert math.isclose(float(loss), total / 3, rel_tol=1e-5)
    # dense form: every cell of image b shares its id
    grid_q, grid_k = q[:, None].expand(-1, 4, -1), k[:, None].expand(-1, 4, -1)
    cells = queue_info_nce(grid_q, grid_k, queue, queue_ids, ids, tau)
    assert math.isclose(float(cells), total / 3, rel_tol=1e-5)


def test_nt_xent_under_bf16_autocast_has_the_fp32_gradient_up_to_rounding():
    """Near-collapsed bf16 embeddings (early training): normalising them in bf16 left a 3.8 %
    error in the gradient (the radial part removed by cancelling near-equal terms); in fp32 only
    the final rounding of the gradient to bf16 remains (2^-9 ≈ 0.2 %)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 128, generator=g)
    views = [(base + 0.05 * torch.randn(16, 128, generator=g)).bfloat16() for _ in range(2)]

    def gradient(dtype: torch.dtype, autocast: bool) -> torch.Tensor:
        z1, z2 = (v.to(dtype, copy=True).requires_grad_() for v in views)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = nt_xent(z1, z2, 0.07)
        loss.backward()  # outside the autocast region, as the engine's step does
        assert z1.grad is not None
        return z1.grad.float()

    reference, mixed = gradient(torch.float32, False), gradient(torch.bfloat16, True)
    assert ((mixed - reference).norm() / reference.norm()).item() < 0.005
