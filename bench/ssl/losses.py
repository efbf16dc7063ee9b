"""Contrastive losses that never use a crop of an image as that image's negative.

A pool smaller than the batch repeats images within a batch (``bench.ssl.engine.sample_batch``),
and a queue of past keys holds keys of the query's own image. Both losses take the image id of
every row and leave same-image pairs out of the denominator: such a pair is neither a positive nor
a negative (the mechanism: mask, not cap the batch, so the batch size, BatchNorm statistics and
cost per step stay the same on every dataset). With distinct ids they are the usual losses.

Under bf16 autocast the losses are float32 from the embeddings on: the embeddings are cast to
float32 before they are L2-normalised (CPU autocast runs ``normalize`` in the input's dtype, and
its backward, which removes the gradient's radial part, is a difference of near-equal terms), and
the similarity logits are float32 products (``fp32_matmul``): a bf16 cosine is good to ~3 digits,
and divided by a temperature of 0.07 that error would reach the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.core.precision import fp32_matmul, fp32_normalize


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, ids: torch.Tensor | None = None
) -> torch.Tensor:
    """NT-Xent (SimCLR) over the 2B views of a batch: row i's positive is the other view of i,
    its negatives every view of an image with another id. ``ids`` None: all distinct (then this
    equals lightly's ``NTXentLoss``)."""
    n = z1.shape[0]
    z = fp32_normalize(torch.cat([z1, z2]), dim=1)
    logits = fp32_matmul(z, z.T) / temperature
    both = torch.arange(n, device=z.device) if ids is None else ids.to(z.device)
    both = torch.cat([both, both])
    rows = torch.arange(2 * n, device=z.device)
    positive = (rows + n) % (2 * n)
    excluded = both[:, None] == both[None, :]
    excluded[rows, positive] = False
    return F.cross_entropy(logits.masked_fill(excluded, -torch.inf), positive)


def queue_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    queue_ids: torch.Tensor,
    ids: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE of each query (``q``, ``B×D``) against its key (``k``) and the queue's keys
    (``K×D``) of other images: queue entries whose id equals the query's are left out.

    ``q``, ``k``, ``queue``: L2-normalised, in float32 (normalised after a ``.float()``). ``q``
    may be ``B×N×D`` (dense: every cell of image b shares ``ids[b]``) with ``k`` its matched
    positives of the same shape.
    """
    pos = (q.float() * k.float()).sum(dim=-1, keepdim=True)
    neg = fp32_matmul(q, queue.T)
    same = (ids[:, None] == queue_ids[None, :]).to(q.device)
    if q.dim() == 3:
        same = same[:, None, :].expand(-1, q.shape[1], -1)
    logits = torch.cat([pos, neg.masked_fill(same, -torch.inf)], dim=-1) / temperature
    logits = logits.flatten(0, -2)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)
