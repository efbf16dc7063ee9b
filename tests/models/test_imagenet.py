"""bench.models.imagenet: local and hub lookup, verified download, offline error, state dict."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.core.errors import BenchError
from bench.models import imagenet as weights
from tests.helpers.http import FileServer, unused_url
from tests.helpers.weights import fake_imagenet_weights

CONTENT = b"not really a checkpoint"
PREFIX = hashlib.sha256(CONTENT).hexdigest()[:8]
NAME = f"resnet18-{PREFIX}.pth"
REAL_TABLE = dict(weights.TORCHVISION_WEIGHTS)  # before the fixture patches it


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    with FileServer(tmp_path / "served") as server:
        yield server


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file-name table matching CONTENT, an empty hub cache and no BENCH_WEIGHTS_DIR."""
    monkeypatch.setattr(weights, "TORCHVISION_WEIGHTS", {"resnet18": NAME})
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("BENCH_WEIGHTS_DIR", raising=False)


def test_real_table_names_torchvision_v1_files() -> None:
    assert REAL_TABLE == {
        "resnet18": "resnet18-f37072fd.pth",
        "resnet34": "resnet34-b627a593.pth",
        "resnet50": "resnet50-19c8e357.pth",
    }
    assert weights._sha256_prefix(REAL_TABLE["resnet50"]) == "19c8e357"


def test_found_in_weights_dir_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / NAME).write_bytes(CONTENT)
    got = weights.resolve_imagenet_weights(
        "resnet18", weights_dir=tmp_path / "w", allow_download=False
    )
    assert got == tmp_path / "w" / NAME
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(tmp_path / "w"))
    assert weights.resolve_imagenet_weights("resnet18", allow_download=False) == got


def test_found_in_torch_hub_cache(tmp_path: Path) -> None:
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / NAME).write_bytes(CONTENT)
    got = weights.resolve_imagenet_weights(
        "resnet18", weights_dir=tmp_path / "w", allow_download=False
    )
    assert got == hub / NAME


def test_prefix_mismatch_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / NAME).write_bytes(b"something else")
    with pytest.raises(
        BenchError, match=f"{tmp_path / 'w' / NAME}: sha256 .* does not start with {PREFIX}"
    ):
        weights.resolve_imagenet_weights("resnet18", weights_dir=tmp_path / "w")


def test_download_from_server_once(file_server: FileServer, tmp_path: Path) -> None:
    file_server.add(f"models/{NAME}", CONTENT)
    kw = {"weights_dir": tmp_path / "w", "base_url": file_server.url}
    got = weights.resolve_imagenet_weights("resnet18", **kw)
    assert got == tmp_path / "w" / NAME and got.read_bytes() == CONTENT
    assert file_server.requests == [(f"models/{NAME}", None)]
    weights.resolve_imagenet_weights("resnet18", **kw)
    assert len(file_server.requests) == 1


def test_download_with_wrong_content_fails_and_removes_it(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add(f"models/{NAME}", b"tampered")
    with pytest.raises(BenchError, match=f"starting {PREFIX}"):
        weights.resolve_imagenet_weights(
            "resnet18", weights_dir=tmp_path / "w", base_url=file_server.url
        )
    assert not (tmp_path / "w" / NAME).exists()


@pytest.mark.parametrize("allow_download", [False, True])
def test_offline_error_says_what_to_put_where(tmp_path: Path, allow_download: bool) -> None:
    with pytest.raises(BenchError) as err:
        weights.resolve_imagenet_weights(
            "resnet18",
            weights_dir=tmp_path / "w",
            allow_download=allow_download,
            base_url=unused_url(),
        )
    message = str(err.value)
    for part in (
        NAME,
        str(tmp_path / "w"),
        str(tmp_path / "hub" / "checkpoints"),
        f"/models/{NAME}",
    ):
        assert part in message, message
    assert not (tmp_path / "w" / NAME).exists()


def test_unknown_encoder() -> None:
    with pytest.raises(BenchError, match="no ImageNet weights known for encoder 'vgg11'"):
        weights.resolve_imagenet_weights("vgg11", allow_download=False)


def test_state_dict_without_fc_loads_strictly_into_smp_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segmentation_models_pytorch.encoders import get_encoder

    fake_imagenet_weights(tmp_path / "w", monkeypatch)
    state = weights.load_imagenet_state_dict(
        "resnet18", weights_dir=tmp_path / "w", allow_download=False
    )
    assert state and not any(k.startswith("fc.") for k in state)
    get_encoder("resnet18", weights=None).load_state_dict(state, strict=True)
