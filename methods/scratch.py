"""Supervised baseline: the segmentation model trained from random initialisation."""

from __future__ import annotations

from bench.models.encoders import EncoderState
from bench.ssl.method import Baseline, EncoderContext
from bench.ssl.registry import register_method


@register_method
class Scratch(Baseline):
    name = "scratch"
    description = "supervised baseline: random encoder initialisation, no pretraining"
    fixed_init = "random"

    def encoder_state(self, ctx: EncoderContext) -> EncoderState | None:
        return None
