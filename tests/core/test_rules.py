"""The shared rules of bench.core: URL masking, the compile policy, the LR schedule, devices."""

from __future__ import annotations

import math

import pytest
import torch

from bench.core.compile import AUTO_MIN_STEPS, should_compile
from bench.core.devices import device_name, resolve_device
from bench.core.errors import BenchError
from bench.core.schedules import warmup_then
from bench.core.urls import mask_password

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://bench:secret@db/bench", "postgresql+psycopg://bench:***@db/bench"),
        ("postgresql://u:p@ss:w/rd@host:5432/db", "postgresql://u:***@host:5432/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:///results/bench.sqlite", "sqlite:///results/bench.sqlite"),
        ("journal:///shared/sweep.log", "journal:///shared/sweep.log"),
        # unparsable for urllib / SQLAlchemy: still no password
        ("postgresql://u:se[cret@host/db", "postgresql://u:***@host/db"),
        ("http://[::1:secret@host/x", "http://[:***@host/x"),
        ("not a url u:secret@host", "not a url u:***@host"),
    ],
)
def test_mask_password(url: str, shown: str) -> None:
    assert mask_password(url) == shown


@pytest.mark.parametrize("password", ["s3cr3t", "p@ss", "a:b", "x]y[z", "%40%3A", "::@@//"])
def test_the_masker_never_returns_the_password(password: str) -> None:
    for template in (
        "postgresql://user:{}@host/db",
        "mysql+pymysql://user:{}@h:1/d?x=1",
        "user:{}@host",
        "://user:{}@",
    ):
        assert password not in mask_password(template.format(password))


def test_compile_policy_is_per_stage_and_device() -> None:
    for stage, threshold in AUTO_MIN_STEPS.items():
        assert should_compile("auto", stage, threshold, CUDA)
        assert not should_compile("auto", stage, threshold - 1, CUDA)  # the warm-up won't pay
        assert not should_compile("auto", stage, 10 * threshold, CPU)
        assert should_compile("on", stage, 1, CPU)
        assert not should_compile("off", stage, 10 * threshold, CUDA)
    with pytest.raises(ValueError, match="compile mode"):
        should_compile("sometimes", "finetune", 1, CPU)


def test_warmup_then_cosine_and_constant() -> None:
    f = warmup_then("cosine", 2, 10)
    assert [f(0), f(1)] == [0.5, 1.0]  # linear warmup
    assert f(2) == 1.0 and f(6) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)
    assert f(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    g = warmup_then("constant", 0, 10)
    assert {g(s) for s in range(12)} == {1.0}
    with pytest.raises(ValueError, match="schedule"):
        warmup_then("linear", 0, 10)


def test_devices() -> None:
    assert resolve_device("cpu") == CPU and device_name(CPU) == "cpu"
    with pytest.raises(BenchError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("auto") == CPU
