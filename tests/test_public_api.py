"""The public API is what each package's `__init__` lists in `__all__` (DESIGN.md rule 13): every
name listed there imports. The same holds for the `__all__` of every module under detkit/. No old
import paths are kept, so there is no list of them to check.
"""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import detkit

ROOT = Path(detkit.__file__).parent


def _modules(packages_only: bool) -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__main__" or (packages_only and parts[-1] != "__init__"):
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


PACKAGES = _modules(packages_only=True)
MODULES = [m for m in _modules(packages_only=False) if m not in PACKAGES]


def test_every_package_is_found():
    assert {"detkit", "detkit.models", "detkit.data", "detkit.cli", "detkit.utils"} <= set(PACKAGES)
    assert len(PACKAGES) == sum(1 for _ in ROOT.rglob("__init__.py"))


def _missing_from_all(module: str) -> list[str]:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", ())
    assert len(set(names)) == len(names), f"{module}.__all__ lists a name twice"
    namespace: dict = {}
    exec(f"from {module} import *", namespace)  # what a star import gives, lazy names included
    return [name for name in names if name not in namespace or not hasattr(mod, name)]


@pytest.mark.parametrize("package", PACKAGES)
def test_package_all_imports(package: str) -> None:
    assert not _missing_from_all(package), f"{package}.__all__ names that do not import"


@pytest.mark.parametrize("module", MODULES)
def test_module_all_imports(module: str) -> None:
    assert not _missing_from_all(module), f"{module}.__all__ names that do not import"


def test_no_module_re_exports_a_name_of_another_package() -> None:
    """A name is public where it is defined: no `__all__` lists a name imported from another detkit package."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        package = path.relative_to(ROOT).parts[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        foreign = {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("detkit.")
            if node.module.split(".")[1] != package
            for alias in node.names
        }
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                found += [f"{path.relative_to(ROOT.parent)}: {n}" for n in ast.literal_eval(node.value) if n in foreign]
    assert not found, "re-exported from another package:\n" + "\n".join(found)


def test_proposals_command_imports_without_torch() -> None:
    """`from detkit.proposals import RPN` is lazy, so `detkit proposals` (and its selective-search
    workers, which preload detkit.proposals.cache) never import torch."""
    code = (
        "import sys\nsys.modules['torch'] = None\n"
        "import detkit.proposals.cache\nfrom detkit.cli import main\nsys.exit(main(['proposals', '--help']))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--max-proposals" in run.stdout, run.stderr[-2000:]
