"""The import graph's house rules: no cycles, no import of a higher layer (see CONTRIBUTING.md)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.imports import cycles, import_edges, layer_of, upward_imports
from tests.helpers.paths import REPO

PACKAGES = ("bench", "methods")


def test_no_import_cycles() -> None:
    found = cycles(import_edges(REPO, PACKAGES))
    assert not found, "import cycles: " + "; ".join(" ↔ ".join(c) for c in found)


def test_no_lower_layer_imports_a_higher_one() -> None:
    bad = upward_imports(import_edges(REPO, PACKAGES))
    assert not bad, "\n".join(
        f"{e.importer}:{e.line} imports {e.imported} (layer "
        f"{layer_of(e.importer)} → {layer_of(e.imported)})"
        for e in bad
    )


def test_every_module_has_a_layer() -> None:
    modules = {e.importer for e in import_edges(REPO, PACKAGES)}
    assert "bench.ssl.engine" in modules and "methods.pscl" in modules
    for module in modules:
        layer_of(module)  # raises for a module outside every layer


def test_the_checker_sees_a_planted_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The rules can fail: a package whose data layer imports a runner, lazily, in a function."""
    pkg = tmp_path / "bench"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "cards.py").write_text("def f():\n    from bench.runner import run\n")
    (pkg / "runner.py").write_text("from bench.data.cards import f\nfrom .data import cards\n")
    edges = import_edges(tmp_path, ["bench"])
    assert cycles(edges) == [["bench.data.cards", "bench.runner"]]
    assert [(e.importer, e.imported) for e in upward_imports(edges)] == [
        ("bench.data.cards", "bench.runner")
    ]
