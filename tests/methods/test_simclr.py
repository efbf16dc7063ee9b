"""SimCLR: lightly head and NT-Xent; the loss falls on synthetic micrographs."""

from __future__ import annotations

from bench.ssl.registry import get_method


def test_engine_overrides_go_to_the_engine_and_params_to_the_method():
    method = get_method("simclr")({"lr": "0.01", "steps": "3", "temperature": "0.2"})
    cfg = method.engine_config("standard")
    assert cfg.lr == 0.01 and cfg.steps == 3 and cfg.batch_size == 128
    assert method.params.temperature == 0.2
