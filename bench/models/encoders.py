"""smp ResNet encoders: construction, their stage widths, the starting weights every method in a
comparison shares, and strict loading (a mismatch is an error, never a silent random init)."""

from __future__ import annotations

from typing import cast

import torch
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from bench.core.errors import BenchError

EncoderState = dict[str, torch.Tensor]
INITS = ("random", "imagenet")


def build_encoder(name: str) -> nn.Module:
    """An smp encoder (5 stages, 3 input channels) with random weights."""
    return get_encoder(name, in_channels=3, depth=5, weights=None)


def encoder_channels(encoder: nn.Module) -> tuple[int, ...]:
    """Channels of the four ResNet stages of an smp encoder."""
    channels = cast("list[int]", encoder.out_channels)  # smp encoders list every stage's width
    return tuple(channels[2:])


def initial_encoder_state(encoder: str, init: str) -> EncoderState | None:
    """The weights every method in a comparison starts from: ``random`` (None) or ``imagenet``."""
    if init == "random":
        return None
    if init == "imagenet":
        from bench.models.imagenet import load_imagenet_state_dict

        return load_imagenet_state_dict(encoder)
    raise BenchError(f"unknown --init '{init}'; choose 'random' or 'imagenet'")


def load_strict(module: nn.Module, state: EncoderState, name: str) -> None:
    """Load weights with strict keys; a missing/unexpected key or shape mismatch is a BenchError."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        expected, given = set(module.state_dict()), set(state)
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        detail = (
            "; ".join(
                part
                for part in (
                    f"missing {len(missing)} key(s) e.g. {missing[:3]}" if missing else "",
                    f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:3]}"
                    if unexpected
                    else "",
                )
                if part
            )
            or str(exc).splitlines()[0]
        )
        raise BenchError(
            f"weights do not fit a {name} ({detail}); refusing to fall back to random "
            "initialisation"
        ) from None
