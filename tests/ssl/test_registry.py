"""The method registry: discovery of methods/, one class per name, clear errors, parameters."""

from __future__ import annotations

import pytest

from bench.core.errors import BenchError
from bench.ssl.method import Baseline, build_params
from bench.ssl.registry import all_methods, get_method, method_names, register_method


def test_discovers_every_module_of_methods() -> None:
    from pathlib import Path

    import methods

    modules = {p.stem for p in Path(methods.__path__[0]).glob("*.py") if p.stem != "__init__"}
    assert {cls.__module__.removeprefix("methods.") for cls in all_methods()} == modules
    assert {"scratch", "imagenet", "simclr", "byol", "densecl", "matssl", "pscl"} <= set(
        method_names()
    )


def test_a_name_is_registered_once() -> None:
    class Twin(Baseline):
        name = "scratch"
        description = "an impostor"

        def encoder_state(self, ctx):
            return None

    with pytest.raises(ValueError, match="registered twice"):
        register_method(Twin)


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(BenchError, match=r"unknown method 'simclrr'; known methods: .*simclr"):
        get_method("simclrr")


def test_params_are_coerced_and_bad_ones_named() -> None:
    params = get_method("matssl")({"temperature": "0.1", "gated": "false"}).params
    assert params.temperature == 0.1 and params.gated is False
    with pytest.raises(BenchError, match=r"method 'matssl' has no parameter.*tau"):
        get_method("matssl")({"tau": 1})
    with pytest.raises(BenchError, match="temperature='warm' is not a float"):
        build_params(type(params), {"temperature": "warm"}, "matssl")
    with pytest.raises(BenchError, match="gated='maybe' is not a bool"):
        get_method("matssl")({"gated": "maybe"})
    with pytest.raises(BenchError, match="hidden_dim='wide' is not an int"):
        get_method("matssl")({"hidden_dim": "wide"})
