"""The one Registry class behind backbones and models: overwrite, unregister, entry-point plugins."""

import sys
import warnings
from importlib.metadata import EntryPoint

import pytest
from torch import nn

from detkit.backbones import registry as backbone_registry
from detkit.models import build_model, list_models, register_model, unregister_model
from detkit.models import registry as model_registry
from detkit.models.registry import ENTRY_POINT_GROUP, MODELS, get_model_builder
from detkit.utils import registry as utils_registry
from detkit.utils.registry import Registry


def fake_entry_points(*eps):
    def entry_points(*, group):
        return [ep for ep in eps if ep.group == group]

    return entry_points


def test_backbones_and_models_share_the_class():
    assert isinstance(backbone_registry.BACKBONES, Registry) and isinstance(MODELS, Registry)
    assert (MODELS.kind, MODELS.returns, MODELS.entry_point_group) == ("model", nn.Module, "detkit.models")
    assert backbone_registry.BACKBONES.entry_point_group == "detkit.backbones"
    assert set(MODELS.names()) == set(list_models()) and "faster_rcnn_tiny" in MODELS


def test_generic_registry_errors_name_the_kind():
    reg = Registry("widget", nn.Module)
    reg.register("lin")(lambda **kw: nn.Linear(2, 3, **kw))
    assert reg.names() == ["lin"] and "lin" in reg and "nope" not in reg
    assert reg.build("lin", bias=False).bias is None
    with pytest.raises(ValueError, match=r"unknown widget 'lni'; available: lin$"):
        reg.get("lni")
    with pytest.raises(ValueError, match="widget 'lin' is already registered"):
        reg.register("lin")(nn.Identity)
    with pytest.raises(TypeError, match="widget builder for 'x' must be callable"):
        reg.register("x")(42)
    reg.register("lin", overwrite=True)(lambda **kw: "not a module")
    with pytest.raises(TypeError, match="builder of widget 'lin' returned str, not a Module"):
        reg.build("lin")
    reg.unregister("lin")
    assert reg.names() == []
    with pytest.raises(KeyError, match="widget 'lin' is not registered"):
        reg.unregister("lin")


def test_register_model_overwrite_and_unregister():
    def tiny(*, num_classes, **overrides):
        return nn.Linear(4, num_classes + 1)

    name = "test_registry_linear"
    register_model(name)(tiny)
    try:
        assert name in list_models() and get_model_builder(name) is tiny
        assert build_model(name, num_classes=3).out_features == 4
        with pytest.raises(ValueError, match=f"model '{name}' is already registered"):
            register_model(name)(tiny)
        register_model(name, overwrite=True)(lambda *, num_classes: nn.Conv2d(3, num_classes, 1))
        assert isinstance(build_model(name, num_classes=2), nn.Conv2d)
        register_model(name, overwrite=True)(lambda *, num_classes: [num_classes])
        with pytest.raises(TypeError, match=f"builder of model '{name}' returned list, not a Module"):
            build_model(name, num_classes=2)
    finally:
        unregister_model(name)
    assert name not in list_models()
    with pytest.raises(KeyError):
        unregister_model(name)


def test_build_model_errors_unchanged():
    with pytest.raises(ValueError, match="unknown model 'faster_rcnn_tinny'; available: .*faster_rcnn_tiny"):
        build_model("faster_rcnn_tinny", num_classes=0)  # the name is checked first
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        build_model("faster_rcnn_tiny", num_classes=0)


def test_model_entry_point_plugin_is_loaded_lazily(monkeypatch, tmp_path):
    (tmp_path / "detkit_test_model_plugin.py").write_text(
        "from torch import nn\n\n"
        "def build(*, num_classes, hidden=8):\n"
        "    return nn.Sequential(nn.Linear(4, hidden), nn.Linear(hidden, num_classes + 1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "detkit_test_model_plugin", raising=False)
    ep = EntryPoint(name="plugin_net", value="detkit_test_model_plugin:build", group=ENTRY_POINT_GROUP)
    backbone_ep = EntryPoint(name="backbone_only", value="nowhere:nothing", group="detkit.backbones")
    monkeypatch.setattr(utils_registry, "entry_points", fake_entry_points(ep, backbone_ep))
    monkeypatch.setattr(MODELS, "_plugins", None)
    monkeypatch.setattr(backbone_registry.BACKBONES, "_plugins", None)

    assert "plugin_net" in list_models() and "backbone_only" not in list_models()
    backbones = backbone_registry.list_backbones()
    assert "backbone_only" in backbones and "plugin_net" not in backbones
    assert "detkit_test_model_plugin" not in sys.modules  # listed without importing the plugin
    model = build_model("plugin_net", num_classes=2, hidden=5)
    assert "detkit_test_model_plugin" in sys.modules
    assert [m.out_features for m in model] == [5, 3]


def test_model_entry_point_cannot_shadow_a_builtin(monkeypatch):
    ep = EntryPoint(name="faster_rcnn_tiny", value="nowhere:nothing", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(utils_registry, "entry_points", fake_entry_points(ep))
    monkeypatch.setattr(MODELS, "_plugins", None)
    with pytest.warns(RuntimeWarning, match="reuses the registered model name 'faster_rcnn_tiny'"):
        names = list_models()
    assert names.count("faster_rcnn_tiny") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # discovered once: no second warning
        assert get_model_builder("faster_rcnn_tiny").__module__.startswith("detkit.models.")


def test_old_import_paths():
    from detkit.backbones import get_builder, list_backbones, register_backbone, unregister_backbone  # noqa: F401
    from detkit.backbones.registry import ENTRY_POINT_GROUP as BACKBONE_GROUP
    from detkit.models.registry import build_model as build_model_old_path
    from detkit.models.registry import list_models as list_models_old_path
    from detkit.models.registry import register_model as register_model_old_path

    assert BACKBONE_GROUP == "detkit.backbones"
    assert build_model_old_path is build_model and list_models_old_path is list_models
    assert register_model_old_path is register_model and model_registry.build_model is build_model
