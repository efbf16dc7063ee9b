"""Supervised baseline: the encoder starts from torchvision's ImageNet-1k (V1) classifier weights.

These are the weights smp's ``"imagenet"`` ResNets and both seed papers' baselines use.
"""

from __future__ import annotations

from bench.models.encoders import EncoderState, initial_encoder_state
from bench.ssl.method import Baseline, EncoderContext
from bench.ssl.registry import register_method


@register_method
class ImageNet(Baseline):
    name = "imagenet"
    description = "supervised baseline: ImageNet-1k (torchvision V1) encoder, no pretraining"
    fixed_init = "imagenet"

    def encoder_state(self, ctx: EncoderContext) -> EncoderState | None:
        return initial_encoder_state(ctx.encoder, "imagenet")
