"""Imports between the backbone modules: no cycle, and each module imports on its own.

The torchvision key maps live in their architecture modules and register with the generic
`detkit.backbones.weights`; these tests fail if weights (or the registry) imports an
architecture module again, at the top or inside a function.
"""

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "detkit" / "backbones"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
ARCHITECTURES = {"alexnet", "fpn", "googlenet", "lenet", "mobilenet", "resnet", "simple", "vgg"}


def sibling_imports(module: str) -> set[str]:
    """detkit.backbones modules that `module` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["detkit", "backbones"] and len(parts) > 2 and parts[2] in MODULES:
                found.add(parts[2])
    return found - {module}


def test_module_list_is_complete():
    assert ARCHITECTURES < set(MODULES) and {"base", "registry", "weights"} <= set(MODULES)


def test_backbone_imports_form_no_cycle():
    graph = {module: sibling_imports(module) for module in MODULES}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle between backbone modules: {e.args[1]}") from None
    assert order.index("base") < order.index("weights") < order.index("registry")
    for module in ("base", "weights", "registry"):
        assert not graph[module] & ARCHITECTURES, f"{module} imports architecture modules {graph[module]}"


# Each module is imported into an interpreter where no detkit module is loaded yet and the
# package __init__ (which imports every architecture) is replaced by an empty package, so the
# module initialises with only what it imports itself. Both orders, to catch order effects.
ALONE = """
import importlib, sys, types
import torch  # loaded once; only detkit modules are dropped between imports

def fresh(module):
    for name in [m for m in sys.modules if m == "detkit" or m.startswith("detkit.")]:
        del sys.modules[name]
    package = types.ModuleType("detkit.backbones")
    package.__path__ = [{package!r}]
    sys.modules["detkit.backbones"] = package
    return importlib.import_module("detkit.backbones." + module)

archs = {{"alexnet": "alexnet", "googlenet": "googlenet", "mobilenet": "mobilenet_v2",
          "resnet": "resnet50", "vgg": "vgg16_bn"}}
for order in ({modules!r}, {modules!r}[::-1]):
    for module in order:
        mod = fresh(module)
        registry = sys.modules["detkit.backbones.registry"] if module not in ("base", "weights") else None
        weights = sys.modules["detkit.backbones.weights"] if module != "base" else None
        if module in archs:  # its key map and its builders registered by importing it alone
            assert weights.get_key_map(archs[module]) is not None, module
            assert archs[module] in registry.list_backbones(), module
        if module == "fpn":  # the "<arch>_fpn" key-map wrapper and builders, no architecture
            assert "_fpn" in weights._WRAPPERS and not weights._KEY_MAPS
            assert "resnet50_fpn" in registry.list_backbones() and "resnet50" not in registry.list_backbones()
        if module in ("lenet", "simple"):
            assert {{"lenet": "lenet5", "simple": "simple_convnet"}}[module] in registry.list_backbones()
print("ok")
"""


def test_each_backbone_module_imports_alone_in_any_order():
    code = ALONE.format(package=str(PACKAGE), modules=MODULES)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_each_backbone_module_owns_its_key_map():
    from detkit.backbones import alexnet, fpn, googlenet, mobilenet, resnet, vgg, weights

    assert resnet.torchvision_key_map("layer3.5.bn2.running_var") == "c4.5.conv2.norm.running_var"
    assert vgg.torchvision_key_map(16, True)("features.1.weight") == "c1.conv1.norm.weight"
    body = resnet.torchvision_key_map
    assert fpn.torchvision_key_map(body, ("c2", "c3"))("fpn.layer_blocks.1.0.bias") == "output.c3.conv.bias"
    assert weights.get_key_map("mobilenet_v2") is mobilenet.torchvision_key_map
    assert weights.get_key_map("alexnet") is alexnet.torchvision_key_map
    assert weights.get_key_map("googlenet") is googlenet.torchvision_key_map
    assert not hasattr(weights, "resnet_key_map")  # one name per key map: `<module>.torchvision_key_map`


def test_key_map_registration_refuses_duplicates():
    from detkit.backbones import weights

    with pytest.raises(ValueError, match="resnet50"):
        weights.register_key_maps("resnet_again", {"resnet50": str})
    with pytest.raises(ValueError, match="'vgg'"):
        weights.register_key_maps("vgg", {"vgg_new": str})
    with pytest.raises(ValueError, match="'_fpn'"):
        weights.register_key_map_wrapper("_fpn", lambda body_map, in_features: body_map)
    assert "vgg_new" not in weights._KEY_MAPS and "resnet_again" not in weights.DROPPED_KEYS
    assert set(weights.DROPPED_KEYS) == {"resnet", "vgg", "mobilenet_v2", "alexnet", "googlenet"}
