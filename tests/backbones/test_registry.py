"""Registry: names, errors, entry-point plugins (incl. the in-repo example package), import hygiene."""

import importlib.util
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from detkit.backbones import (
    ENTRY_POINT_GROUP,
    Backbone,
    build_backbone,
    get_builder,
    list_backbones,
    register_backbone,
    registry,
    unregister_backbone,
)
from detkit.utils import registry as utils_registry

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "detkit_backbone_plugin"


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="resnet5O") as info:
        build_backbone("resnet5O")
    assert "resnet50" in str(info.value) and "vgg16_bn" in str(info.value)


def test_register_backbone_and_duplicates():
    @register_backbone("test_tiny_resnet")
    def tiny(**kwargs):
        return build_backbone("resnet18", **kwargs)

    try:
        assert "test_tiny_resnet" in list_backbones()
        backbone = build_backbone("test_tiny_resnet", out_features=("c3",), norm="frozen_bn")
        assert list(backbone.feature_specs()) == ["c3"]
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("test_tiny_resnet")(tiny)
        register_backbone("test_tiny_resnet", overwrite=True)(lambda **kw: torch.nn.Conv2d(3, 3, 1))
        with pytest.raises(TypeError, match="not a Backbone"):
            build_backbone("test_tiny_resnet")
    finally:
        unregister_backbone("test_tiny_resnet")
    assert "test_tiny_resnet" not in list_backbones()


def fake_entry_points(*eps):
    def entry_points(*, group):
        return [ep for ep in eps if ep.group == group]

    return entry_points


def test_entry_point_plugin_is_discovered_and_loaded_lazily(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "detkit_tiny_plugin", raising=False)
    ep = EntryPoint(name="tiny_net", value="detkit_tiny_plugin:build_tiny_net", group=ENTRY_POINT_GROUP)
    other = EntryPoint(name="not_ours", value="nowhere:nothing", group="other.group")
    monkeypatch.setattr(utils_registry, "entry_points", fake_entry_points(ep, other))
    monkeypatch.setattr(registry.BACKBONES, "_plugins", None)

    assert "tiny_net" in list_backbones() and "not_ours" not in list_backbones()
    assert "detkit_tiny_plugin" not in sys.modules  # listed without importing the plugin
    backbone = build_backbone("tiny_net", width=8, out_features=("c1", "c3"), freeze_at=1)
    assert "detkit_tiny_plugin" in sys.modules
    assert isinstance(backbone, Backbone)
    assert {k: tuple(v) for k, v in backbone.feature_specs().items()} == {"c1": (8, 2), "c3": (8, 8)}
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 40, 24))
    assert [tuple(t.shape) for t in out.values()] == [(1, 8, 20, 12), (1, 8, 5, 3)]
    assert all(not p.requires_grad for p in backbone.c1.parameters())
    assert get_builder("tiny_net").__name__ == "build_tiny_net"


def test_installed_distribution_is_discovered(monkeypatch, tmp_path):
    """End to end through importlib.metadata: a dist-info as `pip install` of the example writes it."""
    declared = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]
    dist_info = tmp_path / "detkit_tiny_plugin-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: detkit-tiny-plugin\nVersion: 0.1.0\n")
    lines = [f"[{group}]" + "".join(f"\n{k} = {v}" for k, v in eps.items()) for group, eps in declared.items()]
    (dist_info / "entry_points.txt").write_text("\n\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setattr(registry.BACKBONES, "_plugins", None)
    assert "tiny_net" in list_backbones()
    backbone = build_backbone("tiny_net", norm="bn")
    assert dict(backbone.feature_specs()) == {"c2": (16, 4), "c3": (16, 8)}


def test_entry_point_cannot_shadow_a_builtin(monkeypatch):
    ep = EntryPoint(name="resnet50", value="nowhere:nothing", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(utils_registry, "entry_points", fake_entry_points(ep))
    monkeypatch.setattr(registry.BACKBONES, "_plugins", None)
    with pytest.warns(RuntimeWarning, match="resnet50"):
        names = list_backbones()
    assert names.count("resnet50") == 1
    assert get_builder("resnet50").__module__ == "detkit.backbones.resnet"


def test_example_package_declares_the_entry_point():
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    declared = meta["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert declared == {"tiny_net": "detkit_tiny_plugin:build_tiny_net"}
    module, attr = declared["tiny_net"].split(":")
    assert (EXAMPLE / module / "__init__.py").is_file()
    assert f"def {attr}(" in (EXAMPLE / module / "__init__.py").read_text()


def test_no_lightning_import_in_plain_modules():
    modules = ["detkit.backbones", "detkit.layers"]
    if importlib.util.find_spec("detkit.losses") is not None:
        modules.append("detkit.losses")
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "assert not bad, bad\nassert 'detkit.backbones' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
