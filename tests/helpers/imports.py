"""The import graph of packages, read with ``ast`` (every import, module level or inside a
function), and the two rules the house keeps: no cycles, and no import of a higher layer."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LAYERS: tuple[tuple[str, ...], ...] = (
    ("bench",),  # the package itself: its __init__ imports nothing
    ("bench.core",),
    ("bench.data",),
    ("bench.models",),
    ("bench.ssl",),
    ("methods",),
    ("bench.finetune",),
    ("bench.results",),
    ("bench.profiles",),
    ("bench.runner",),
    ("bench.sweeps", "bench.reporting"),
    ("bench.controls",),
    ("bench.perf",),
    ("bench.commands",),
    ("bench.cli", "bench.__main__"),
)
"""Lowest first. A module may import its own layer and any lower one."""
ALLOWED_UPWARD = {("bench.ssl.registry", "methods")}
"""(importer, imported prefix): the method registry discovers ``methods/``, by design."""


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges(root: Path, packages: Iterable[str]) -> list[Edge]:
    """Every import between modules of ``packages`` (folders under ``root``)."""
    files = {module_name(root, p): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    known = set(files)
    edges: dict[tuple[str, str, int], Edge] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _targets(node, name, is_package):
                resolved = _resolve(target, known)
                if resolved is not None and resolved != name:
                    edges.setdefault(
                        (name, resolved, node.lineno), Edge(name, resolved, node.lineno)
                    )
    return list(edges.values())


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join([*base, node.module] if node.module else base)
    else:
        prefix = node.module or ""
    return [f"{prefix}.{a.name}" for a in node.names] + [prefix]


def _resolve(target: str, known: set[str]) -> str | None:
    """The module of ``known`` that ``target`` names (``pkg.mod.name`` → ``pkg.mod``)."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank < 0:
        raise ValueError(f"module {module} belongs to no layer; add it to LAYERS")
    return rank


def upward_imports(edges: list[Edge]) -> list[Edge]:
    """Edges from a lower layer to a higher one, the allowed exceptions left out."""
    return [e for e in edges if layer_of(e.imported) > layer_of(e.importer) and not _allowed(e)]


def _allowed(edge: Edge) -> bool:
    return any(
        edge.importer == src and (edge.imported == dst or edge.imported.startswith(dst + "."))
        for src, dst in ALLOWED_UPWARD
    )


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), allowed edges ignored."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not _allowed(e):
            graph.setdefault(e.importer, set()).add(e.imported)
            graph.setdefault(e.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found
