"""The MatSSL seed code's training loop, kept as a speed reference for ``bench perf``.

This is how the seed (github.com/dhp510/MatSSL @ af98bfc, ``shared/reference/matssl.md`` §1–2)
pretrains, re-written in our own words: every sample is decoded from its file with PIL and
augmented per image with torchvision transforms inside a ``DataLoader`` with 4 worker processes
(``min(4, cpu count)`` here); the network is a torchvision ResNet whose four stages are pooled,
gated by a learnable sigmoid vector each and concatenated into lightly's SimCLR projection head;
the two views go through two separate forward passes in fp32 (no autocast, no channels_last, no
compile), NT-Xent at τ = 0.07, SGD 0.1 / momentum 0.9 / weight decay 1e-6.

It is *not* used for training; it exists so the project's engine (``bench.ssl.engine``) can be timed
against the loop it replaces on the same images and device.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torchvision
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms as T

from bench.core.cpus import cpu_count
from bench.models.inputs import IMAGENET_MEAN, IMAGENET_STD

STAGE_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}


def seed_workers() -> int:
    """The seed's 4 DataLoader workers, capped at the CPUs available."""
    return min(4, cpu_count())


def seed_transform(size: int) -> T.Compose:
    """The seed's per-image view pipeline (lightly SimCLR defaults, no solarisation).

    Resize the whole image to ``size``² (aspect not kept) → RandomResizedCrop(size, 0.2–1) →
    ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 → RandomGrayscale 0.2 → GaussianBlur (kernel
    ≈ 10 % of the size, odd; σ 0.1–2) with p 0.5 → horizontal flip → ToTensor → ImageNet Normalize.
    """
    kernel = int(0.1 * size) // 2 * 2 + 1
    return T.Compose(
        [
            T.Resize((size, size)),
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class SeedViews(Dataset):
    """Decodes one file per item (as RGB, as lightly's dataset does) and returns two views."""

    def __init__(self, files: list[Path], size: int, crop_bottom: int = 0) -> None:
        self.files = list(files)
        self.crop_bottom = crop_bottom
        self.transform = seed_transform(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.files[i]) as img:
            img = img.convert("RGB")
        if self.crop_bottom:
            # The same pixels as the engine's pool (the card's instrument band removed).
            img = img.crop((0, 0, img.width, img.height - self.crop_bottom))
        return self.transform(img), self.transform(img)


class SeedMatSSL(nn.Module):
    """torchvision ResNet → GAP of the 4 stages × σ(gate) → concat → SimCLR head (3840→2048→128)."""

    def __init__(self, encoder: str = "resnet50") -> None:
        super().__init__()
        if encoder not in STAGE_CHANNELS:
            raise ValueError(f"seed loop: unsupported encoder '{encoder}'")
        net = getattr(torchvision.models, encoder)(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        channels = STAGE_CHANNELS[encoder]
        self.gates = nn.ParameterList(nn.Parameter(torch.ones(1, c)) for c in channels)
        self.head = SimCLRProjectionHead(sum(channels), 2048, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        pooled = []
        for stage, gate in zip(self.stages, self.gates, strict=True):
            x = stage(x)
            pooled.append(x.mean(dim=(2, 3)) * torch.sigmoid(gate))
        return self.head(torch.cat(pooled, dim=1))


def seed_loop_view_passes_per_s(
    files: list[Path],
    device: torch.device,
    batch: int,
    size: int,
    warmup: int,
    steps: int,
    workers: int | None = None,
    encoder: str = "resnet50",
    crop_bottom: int = 0,
    seed: int = 0,
) -> float:
    """Encoder view-passes per second (batch × 2 views per step) of the seed loop, after warm-up.

    ``warmup`` steps (worker start-up included) are excluded; the clock covers ``steps`` steps,
    with ``torch.cuda.synchronize()`` at both ends on CUDA.
    """
    if batch < 2 or steps < 1 or warmup < 0:
        raise ValueError("seed loop needs batch ≥ 2, steps ≥ 1, warmup ≥ 0")
    workers = seed_workers() if workers is None else workers
    torch.manual_seed(seed)
    dataset = SeedViews(files, size, crop_bottom)
    sampler = RandomSampler(
        dataset,
        replacement=True,
        num_samples=batch * (warmup + steps),
        generator=torch.Generator().manual_seed(seed),
    )
    loader = DataLoader(
        dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True
    )
    model = SeedMatSSL(encoder).to(device)
    model.train()
    criterion = NTXentLoss(temperature=0.07)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    started = None
    done = 0
    for step, (v1, v2) in enumerate(loader):
        if step == warmup:
            _sync(device)
            started = time.perf_counter()
        v1, v2 = v1.to(device), v2.to(device)
        z1 = model(v1)
        z2 = model(v2)
        loss = criterion(z1, z2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the seed logs the running loss every step
        if started is not None:
            done += 1
    _sync(device)
    if started is None or done == 0:
        raise RuntimeError("seed loop produced no timed steps")
    return 2 * batch * done / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
