"""Segmentation networks: an smp architecture around an encoder, maybe with pretrained weights."""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from bench.models.encoders import EncoderState, load_strict

ARCHS = ("unetplusplus", "unet")
ENCODERS = ("resnet18", "resnet34", "resnet50")


def build_segmenter(
    arch: str, encoder: str, num_classes: int, encoder_state: EncoderState | None = None
) -> nn.Module:
    """An smp model with a random decoder; the encoder loads ``encoder_state`` with strict keys."""
    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes)
    if encoder_state is not None:
        load_strict(model.encoder, encoder_state, f"{encoder} encoder")
    return model
