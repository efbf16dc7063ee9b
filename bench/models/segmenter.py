"""Segmentation networks: an smp architecture around an encoder, maybe with pretrained weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import segmentation_models_pytorch as smp
from torch import nn

from bench.core.errors import BenchError
from bench.models.encoders import EncoderState, load_strict

ARCHS = ("unetplusplus", "unet")
ENCODERS = ("resnet18", "resnet34", "resnet50")


@dataclass(frozen=True)
class PretrainedWeights:
    """What pretraining hands to fine-tuning: the encoder's weights and, for a method that
    pretrains the whole segmenter body, the decoder's weights of architecture ``arch``."""

    encoder: EncoderState
    decoder: EncoderState | None = None
    arch: str | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        """The segmenter's submodules these weights fill (the rest starts random)."""
        return ("encoder", "decoder") if self.decoder is not None else ("encoder",)


def build_segmenter(
    arch: str, encoder: str, num_classes: int, weights: PretrainedWeights | None = None
) -> nn.Module:
    """An smp model; ``weights`` fill its encoder (and decoder) with strict keys, the head and any
    part without weights start random. A decoder pretrained for another architecture is an error."""
    model = create_segmenter(arch, encoder, num_classes)
    if weights is not None:
        load_pretrained(model, weights, arch, encoder)
    return model


def create_segmenter(arch: str, encoder: str, num_classes: int) -> nn.Module:
    """An smp model with random weights."""
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes)


def load_pretrained(model: nn.Module, weights: PretrainedWeights, arch: str, encoder: str) -> None:
    """Load ``weights`` into ``model`` (an ``arch`` segmenter around ``encoder``), strictly."""
    load_strict(cast(nn.Module, model.encoder), weights.encoder, f"{encoder} encoder")
    if weights.decoder is None:
        return
    if weights.arch != arch:
        raise BenchError(
            f"the pretrained decoder is a {weights.arch} decoder, the fine-tuning architecture is "
            f"{arch}; pretrain for --arch {arch} or use the encoder-only variant"
        )
    load_strict(cast(nn.Module, model.decoder), weights.decoder, f"{arch} decoder ({encoder})")
