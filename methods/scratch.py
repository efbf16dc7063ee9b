"""Supervised baseline: the segmentation model trained from random initialisation."""

from __future__ import annotations

from bench.method import EncoderContext, EncoderState, Method
from bench.registry import register_method


@register_method
class Scratch(Method):
    name = "scratch"
    description = "supervised baseline: random encoder initialisation, no pretraining"
    kind = "supervised"
    fixed_init = "random"

    def encoder_state(self, ctx: EncoderContext) -> EncoderState | None:
        return None
