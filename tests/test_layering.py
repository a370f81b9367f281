"""Imports point downwards only (the layers of docs/layout.md / DESIGN.md): a lower package
never imports a higher one, at module level or inside a function, and the packages import each
other without a cycle. No exceptions.
"""

import ast
from pathlib import Path

import detkit

LAYERS = [
    "utils",
    "structures",
    "layers",
    "losses",
    "backbones",
    "matching",
    "proposals",
    "heads",
    "models",
    "io",
    "data",
    "evaluation",
    "visualize",
    "analysis",
    "engine",
    "export",
    "cli",
]
ROOT = Path(detkit.__file__).parent


def _imported_packages(tree: ast.AST, folder: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, package) of every `detkit.<package>` import in `tree`, top level or inside a function;
    `folder`: the module's folder under detkit/, to resolve relative imports."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            here = ("detkit", *folder)[: len(folder) + 2 - node.level] if node.level else ()
            full = [*here, *(node.module or "").split(".")]
            if full[0] == "detkit" and len(full) > 1 and full[1]:
                found.append((node.lineno, full[1]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("detkit.")]
    return found


def _package_imports() -> dict[str, dict[str, str]]:
    """package -> {imported package: where, as "detkit/<file>:<line>"}, between different packages."""
    graph: dict[str, dict[str, str]] = {name: {} for name in LAYERS}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if len(rel.parts) < 2:  # detkit/__init__.py, detkit/__main__.py
            continue
        source = rel.parts[0]
        for line, target in _imported_packages(ast.parse(path.read_text(encoding="utf-8")), rel.parts[:-1]):
            if target != source:
                graph.setdefault(source, {}).setdefault(target, f"detkit/{rel.as_posix()}:{line}")
    return graph


def test_imports_point_downwards():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [
        f"{where} imports detkit.{target}"
        for source, targets in _package_imports().items()
        for target, where in targets.items()
        if rank[target] > rank[source]
    ]
    assert not upward, "imports that point upwards:\n" + "\n".join(upward)


def _find_cycle(graph: dict[str, dict[str, str]]) -> list[str]:
    """One cycle of `graph` as [a, b, ..., a], or [] when it has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_relative_imports_are_resolved():
    tree = ast.parse("from .io import a\nfrom ..models import b\nfrom . import c\nimport detkit.heads.x")
    assert _imported_packages(tree, ("data",)) == [(1, "data"), (2, "models"), (3, "data"), (4, "heads")]


def test_find_cycle():
    assert _find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {}}) == []
    assert _find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_between_packages():
    graph = _package_imports()
    cycle = _find_cycle(graph)
    where = [graph[a][b] for a, b in zip(cycle, cycle[1:])]
    assert not cycle, "import cycle " + " -> ".join(cycle) + ":\n" + "\n".join(where)


def test_every_package_has_a_layer():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)
