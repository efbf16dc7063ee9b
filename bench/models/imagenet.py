"""ImageNet-1k (torchvision V1) encoder weights: found locally, or downloaded once and verified.

Lookup order: ``weights_dir`` (default ``$BENCH_WEIGHTS_DIR``, else
``~/.cache/microssl-bench/weights``), torch hub's checkpoint cache, then a download into
``weights_dir``. The 8 hex digits in a torchvision file name are the start of its SHA-256, so every
file found or fetched is checked against them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.core.errors import BenchError
from bench.data.download import DownloadError, download, rebase_url, sha256_file

# IMAGENET1K_V1 checkpoints; the suffix of each name is the start of the file's SHA-256.
TORCHVISION_WEIGHTS = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-19c8e357.pth",
}
URL_BASE = "https://download.pytorch.org/models"


def default_weights_dir() -> Path:
    env = os.environ.get("BENCH_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "microssl-bench" / "weights"


def hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_imagenet_weights(
    encoder: str,
    *,
    weights_dir: Path | None = None,
    allow_download: bool = True,
    base_url: str | None = None,
) -> Path:
    """Path of the verified ImageNet checkpoint for ``encoder``; BenchError says how to get it."""
    if encoder not in TORCHVISION_WEIGHTS:
        raise BenchError(
            f"no ImageNet weights known for encoder '{encoder}'; "
            f"known: {', '.join(TORCHVISION_WEIGHTS)}"
        )
    file_name = TORCHVISION_WEIGHTS[encoder]
    prefix = _sha256_prefix(file_name)
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    for folder in (weights_dir, hub_checkpoints_dir()):
        path = folder / file_name
        if path.is_file():
            _check_prefix(path, prefix)
            return path
    url = rebase_url(f"{URL_BASE}/{file_name}", base_url)
    cause = "downloads are disabled"
    if allow_download:
        try:
            return download(url, weights_dir / file_name, sha256_prefix=prefix)
        except DownloadError as exc:
            cause = str(exc)
    raise BenchError(
        f"ImageNet weights for {encoder} not found and not downloadable ({cause}). "
        f"Put the file {file_name} into {weights_dir} (BENCH_WEIGHTS_DIR selects another folder) "
        f"or into torch's cache {hub_checkpoints_dir()}; get it from {url}"
    )


def load_imagenet_state_dict(encoder: str, **kw) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors without the classifier (``fc.*``): an smp encoder's state dict.

    Keyword arguments go to ``resolve_imagenet_weights``.
    """
    path = resolve_imagenet_weights(encoder, **kw)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _sha256_prefix(file_name: str) -> str:
    return file_name.rsplit(".", 1)[0].rsplit("-", 1)[1]


def _check_prefix(path: Path, prefix: str) -> None:
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise BenchError(
            f"{path}: sha256 {digest} does not start with {prefix} as its name promises: "
            "a corrupt or different file; delete it (it will be downloaded again) or replace it"
        )
