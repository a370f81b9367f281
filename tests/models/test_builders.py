"""The builders of detkit.models.builders and the registered builders' keywords: each keyword is
passed by name, `model_keywords` lists a model's keywords with its defaults, and `build_model`
refuses any other keyword with one line naming it and the model."""

import inspect
import typing

import pytest
import torch

from detkit.backbones import build_backbone
from detkit.models import build_model, list_models, model_keywords
from detkit.models import registry as model_registry
from detkit.models.builders import (
    build_roi_heads,
    build_rpn,
    build_transform,
    build_two_stage,
    check_features,
    default_freeze_at,
)
from detkit.models.fast_rcnn import BackgroundBandMatcher

FPN_ANCHORS = ((32,), (64,), (128,), (256,), (512,))


def test_builder_helpers():
    assert default_freeze_at(None, None) == 0 and default_freeze_at(None, "w.pth") == 2
    assert default_freeze_at(None, "w.pth", 1) == 1 and default_freeze_at(3, None) == 3
    specs = build_backbone("simple_convnet", out_features=("c2", "c3")).feature_specs()
    assert check_features(specs, ("c3",)) == ["c3"]
    with pytest.raises(ValueError, match=r"feature 'c5' is not an output of the backbone; it has \['c2', 'c3'\]"):
        check_features(specs, ["c3", "c5"])


def test_two_stage_builder_passes_its_keywords_to_the_parts():
    backbone = build_backbone("simple_convnet", out_features=("c3",))
    model = build_two_stage(
        backbone,
        num_classes=2,
        anchor_sizes=((16, 32),),
        box_loss="giou",
        rpn_cls_loss="focal",
        rpn_pre_nms_top_n_test=77,
        box_nms_threshold=0.4,
        smooth_l1_beta=0.5,
        min_size=100,
        size_divisible=8,
    )
    assert model.rpn.box_loss_type == "giou" and model.rpn.cls_loss_type == "focal"
    assert model.roi_heads.box_loss_type == "giou" and model.roi_heads.cls_loss_type == "ce"
    assert model.rpn.pre_nms_top_n[False] == 77 and model.roi_heads.nms_threshold == 0.4
    assert model.roi_heads.smooth_l1_beta == 0.5
    assert model.transform.min_size == 100 and model.transform.size_divisible == 8
    assert not model.has_masks and not model.requires_proposals
    with pytest.raises(TypeError, match=r"build_two_stage\(\) got an unexpected keyword argument 'rpn_nms_thresh'"):
        build_two_stage(backbone, num_classes=2, anchor_sizes=((16,),), rpn_nms_thresh=0.5)

    # the parts on their own
    rpn = build_rpn(backbone, anchor_sizes=((16, 32),), rpn_nms_threshold=0.6)
    assert rpn.nms_threshold == 0.6 and rpn.in_features == ["c3"]
    heads = build_roi_heads(backbone, num_classes=2, with_mask=True, mask_conv_dims=(8,), box_resolution=5)
    assert heads.has_masks and heads.box_pooler.output_size == 5 and heads.mask_pooler.output_size == 14
    assert build_transform(min_size=None).min_size is None


def test_two_stage_defaults_are_the_parts_defaults():
    """`build_two_stage` takes every keyword of its parts, with the same defaults."""
    own = inspect.signature(build_two_stage).parameters
    for part in (build_rpn, build_roi_heads, build_transform):
        for name, param in inspect.signature(part).parameters.items():
            if param.kind is inspect.Parameter.KEYWORD_ONLY:
                assert name in own and own[name].default == param.default, (part.__name__, name)


def test_fast_rcnn_gives_its_matcher_and_beta_to_the_roi_heads():
    model = build_model("fast_rcnn_tiny", num_classes=2, roi_bg_iou_low=0.2, smooth_l1_beta=0.25)
    matcher = model.roi_heads.matcher
    assert isinstance(matcher, BackgroundBandMatcher) and matcher.bg_iou_low == 0.2
    assert model.roi_heads.smooth_l1_beta == 0.25 and model.rpn is None


def test_an_unused_keyword_is_an_error_naming_it_and_the_model():
    # the case: Fast R-CNN has no RPN, so an RPN keyword would be dropped without a word
    with pytest.raises(TypeError) as err:
        build_model("fast_rcnn_tiny", num_classes=3, rpn_nms_threshold=0.1)
    message = str(err.value)
    assert message.startswith("model 'fast_rcnn_tiny' takes no keyword 'rpn_nms_threshold'; its keywords: norm, ")
    assert "box_nms_threshold" in message and "\n" not in message
    assert "model_keywords('fast_rcnn_tiny')" in message
    # a mask head's keyword on a model without one
    with pytest.raises(TypeError, match=r"^model 'faster_rcnn_tiny' takes no keyword 'mask_conv_dims'; "):
        build_model("faster_rcnn_tiny", num_classes=3, mask_conv_dims=(8,))
    # a misspelling gets the closest keyword
    with pytest.raises(TypeError, match=r"'rpn_nms_thresh' \(did you mean 'rpn_nms_threshold'\?\)"):
        build_model("faster_rcnn_tiny", num_classes=3, rpn_nms_thresh=0.5)


@pytest.mark.parametrize("name", list_models())
def test_every_model_refuses_a_made_up_keyword(name):
    keywords = model_keywords(name)
    assert keywords and "num_classes" not in keywords
    with pytest.raises(TypeError) as err:
        build_model(name, num_classes=3, not_a_keyword_of_any_model=1)  # refused before anything is built
    message = str(err.value)
    assert message.startswith(f"model {name!r} takes no keyword 'not_a_keyword_of_any_model'; its keywords: ")
    assert message.count(", ") == len(keywords) - 1 and "\n" not in message


def test_model_keywords_are_the_models_defaults():
    """Values from the builders' docstrings and the papers (hand-checked)."""
    tiny = model_keywords("faster_rcnn_tiny")
    assert (tiny["min_size"], tiny["max_size"], tiny["anchor_sizes"]) == (128, 213, ((16, 32, 64),))
    assert (tiny["rpn_pre_nms_top_n_train"], tiny["rpn_post_nms_top_n_test"], tiny["norm"]) == (600, 100, "bn")
    assert tiny["rpn_nms_threshold"] == 0.7 and tiny["box_nms_threshold"] == 0.5
    assert not any(key.startswith("mask_") for key in tiny)
    assert model_keywords("mask_rcnn_tiny")["mask_conv_dims"] == (128, 128)
    r50 = model_keywords("faster_rcnn_r50_fpn")
    assert (r50["min_size"], r50["max_size"], r50["anchor_sizes"], r50["norm"]) == (800, 1333, FPN_ANCHORS, "frozen_bn")
    assert (r50["rpn_pre_nms_top_n_train"], r50["representation_size"], r50["fpn_channels"]) == (2000, 1024, 256)
    assert model_keywords("faster_rcnn_mobilenet_v2_fpn")["anchor_sizes"] == FPN_ANCHORS[:-1]
    assert model_keywords("mask_rcnn_r50_fpn")["mask_conv_dims"] == (256, 256, 256, 256)
    vgg = model_keywords("faster_rcnn_vgg16")
    assert (vgg["min_size"], vgg["representation_size"], vgg["dropout"]) == (600, 4096, 0.5)
    assert "pool_type" not in vgg  # the paper's RoIPool is what the model is
    fast = model_keywords("fast_rcnn_tiny")
    assert (fast["min_size"], fast["box_nms_threshold"], fast["roi_batch_size_per_image"]) == (None, 0.3, 64)
    assert fast["smooth_l1_beta"] == 1.0 and fast["roi_bg_iou_low"] == 0.1
    assert not any(key.startswith(("rpn_", "mask_", "anchor")) for key in fast)
    assert model_keywords("fast_rcnn_alexnet")["box_resolution"] == 6
    rcnn = model_keywords("rcnn_alexnet")
    assert (rcnn["crop_size"], rcnn["box_features"], rcnn["nms_threshold"], rcnn["classifier"]) == (
        227,
        "pool5",
        0.3,
        "softmax",
    )
    assert model_keywords("faster_rcnn_googlenet")["transform_input"] is None


def _settings(model) -> dict:
    """Every module's plain (non-tensor) attributes, as text: what a keyword can change besides weights."""
    return {
        f"{name}.{key}": repr(value)
        for name, module in model.named_modules()
        for key, value in vars(module).items()
        if not key.startswith("_")
    }


@pytest.mark.parametrize(
    "name", ["faster_rcnn_tiny", "mask_rcnn_tiny", "fast_rcnn_tiny", "rcnn_tiny", "faster_rcnn_r18_fpn"]
)
def test_building_with_every_listed_default_builds_the_same_model(name):
    """`model_keywords` tells the truth: passing each listed default explicitly changes nothing."""
    torch.manual_seed(0)
    implicit = build_model(name, num_classes=3)
    torch.manual_seed(0)
    explicit = build_model(name, num_classes=3, **model_keywords(name))
    assert _settings(explicit) == _settings(implicit)
    a, b = implicit.state_dict(), explicit.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [n for n in list_models() if n not in ("faster_rcnn_tiny", "mask_rcnn_tiny", "fast_rcnn_tiny", "rcnn_tiny")],
)
def test_building_the_large_models_with_every_listed_default(name):
    test_building_with_every_listed_default_builds_the_same_model(name)


def _declared_type(function, key: str):
    """The type `function` declares for keyword `key`, following its `**kwargs: Unpack[TD]` to where TD leads."""
    hints = typing.get_type_hints(function.__init__ if isinstance(function, type) else function)
    if key in hints:
        return hints[key]
    (typed_dict,) = typing.get_args(hints["kwargs"])
    return _declared_type(model_registry._KEYWORD_SOURCES[typed_dict], key)


def test_each_keyword_set_has_its_functions_types():
    """A TypedDict of a builder's `**kwargs` gives each key the type of the function it reaches."""
    sources = model_registry._KEYWORD_SOURCES
    # two-stage (rules, sizes, mask, all heads), FPN and tiny (each with mask and keypoints), the cascade's
    # (two-stage, FPN and tiny; two with mask), Fast R-CNN, R-CNN
    assert len(sources) == 17
    for keywords, source in sources.items():
        for key, annotation in typing.get_type_hints(keywords).items():
            assert _declared_type(source, key) == annotation, (keywords.__name__, key)


def test_register_keywords_refuses_a_key_the_function_does_not_take():
    from typing import TypedDict

    class Wrong(TypedDict, total=False):
        min_size: int
        rpn_nms_thresh: float

    with pytest.raises(TypeError, match=r"Wrong has keys \['rpn_nms_thresh'\] that build_transform does not take"):
        model_registry.register_keywords(Wrong, build_transform)


def test_a_plugin_builder_is_checked_by_its_signature():
    from torch import nn

    from detkit.models import register_model, unregister_model

    def strict(*, num_classes: int, hidden: int = 8):
        return nn.Linear(hidden, num_classes)

    def open_ended(*, num_classes: int, **anything):
        return nn.Linear(anything["width"], num_classes)

    register_model("test_strict")(strict)
    register_model("test_open_ended")(open_ended)
    try:
        assert model_keywords("test_strict") == {"hidden": 8}
        assert build_model("test_strict", num_classes=2, hidden=3).in_features == 3
        with pytest.raises(TypeError, match=r"^model 'test_strict' takes no keyword 'width'; its keywords: hidden "):
            build_model("test_strict", num_classes=2, width=3)
        assert model_keywords("test_open_ended") == {}  # its **anything may take any keyword: the builder checks
        assert build_model("test_open_ended", num_classes=2, width=5).in_features == 5
    finally:
        unregister_model("test_strict")
        unregister_model("test_open_ended")
