"""Imports point downwards only (the layers of README's "Layout" / DESIGN.md): a lower package
never imports a higher one, at module level or inside a function.

The exceptions are the former homes of the commands, kept so that old import paths work
(`detkit.engine.cli`, `detkit.export.cli`, `detkit.proposals.precompute` and the lazy
`evaluate_main` / `voc_evaluate_main` aliases in `detkit.evaluation`): each only re-exports
from `detkit.cli`.
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
COMPAT_SHIMS = {
    "engine/cli.py",
    "export/cli.py",
    "proposals/precompute.py",
    "evaluation/__init__.py",
    "evaluation/coco_eval.py",
    "evaluation/voc_eval.py",
}


def _imported_packages(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("detkit."):
            found.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("detkit.")]
    return found


def test_imports_point_downwards():
    root = Path(detkit.__file__).parent
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if len(rel.parts) < 2 or rel.parts[0] not in rank or rel.as_posix() in COMPAT_SHIMS:
            continue
        for line, target in _imported_packages(ast.parse(path.read_text(encoding="utf-8"))):
            if target in rank and rank[target] > rank[rel.parts[0]]:
                upward.append(f"detkit/{rel.as_posix()}:{line} imports detkit.{target}")
    assert not upward, "imports that point upwards:\n" + "\n".join(upward)


def test_every_package_has_a_layer():
    root = Path(detkit.__file__).parent
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)
