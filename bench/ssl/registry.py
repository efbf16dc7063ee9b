"""Method registry: each module in ``methods/`` registers its method class by name.

Adding a method means adding one module to ``methods/``; nothing else changes. Discovery imports
every module of the ``methods`` package the first time the registry is read: the one place where a
lower layer imports a higher one, by design.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, TypeVar

from bench.core.errors import BenchError

if TYPE_CHECKING:
    from bench.ssl.method import Method

M = TypeVar("M", bound="type[Method]")

_REGISTRY: dict[str, type[Method]] = {}
_discovered = False


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"method name '{name}' is registered twice ({_REGISTRY[name]} and {cls})")
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import methods

    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"methods.{info.name}")
    _discovered = True


def get_method(name: str) -> type[Method]:
    _discover()
    if name not in _REGISTRY:
        raise BenchError(f"unknown method '{name}'; known methods: {', '.join(method_names())}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    _discover()
    return list(_REGISTRY)


def all_methods() -> list[type[Method]]:
    _discover()
    return list(_REGISTRY.values())
