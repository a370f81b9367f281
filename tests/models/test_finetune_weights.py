"""Fine-tuning: loading a checkpoint into a model with other classes.

Everything but the class-specific layers must load exactly; the rows of the class logits,
class-specific box deltas and mask logits are carried over for the classes both share (by
name; the background always) and keep the model's initialisation otherwise. The expected rows
come from the checkpoints themselves (torchvision's state dict, or the saved detkit model)
and from a second model built with the same seed (the initialisation).
"""

import logging

import pytest
import torch
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn

from detkit.models import COCO_CATEGORY_NAMES, build_model
from detkit.models.weights import convert_torchvision_detector

LOGGER = "detkit.models.weights"
TV_PREDICTOR = "roi_heads.box_predictor"
TV_MASK_LOGITS = "roi_heads.mask_predictor.mask_fcn_logits"
BOX_KEYS = {f"roi_heads.box_predictor.{layer}.{p}" for layer in ("cls_score", "bbox_pred") for p in ("weight", "bias")}
MASK_KEYS = {f"roi_heads.mask_head.mask_logits.{p}" for p in ("weight", "bias")}


def _build(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model(name, **kwargs)


def _rows(tensor, classes, per_class):
    """Rows of `classes` (indices into the layout, background = 0 where it has one), `per_class` each."""
    return torch.cat([tensor[c * per_class : (c + 1) * per_class] for c in classes])


def _differing(state, reference):
    """Keys of `state` whose value differs from `reference`'s (every key of `state` must be in it)."""
    return {k for k, v in state.items() if v.shape != reference[k].shape or not torch.equal(v, reference[k])}


@pytest.fixture(scope="module")
def torchvision_checkpoints(tmp_path_factory):
    """A random torchvision COCO Mask R-CNN (every parameter and buffer noised, so that no value is
    an initialisation constant) saved with and without its mask keys."""
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    state = {k: v + torch.randn_like(v) * 0.01 if v.is_floating_point() else v for k, v in tv.state_dict().items()}
    root = tmp_path_factory.mktemp("tv")
    torch.save(state, root / "mask.pth")
    torch.save({k: v for k, v in state.items() if "mask" not in k}, root / "faster.pth")
    return state, root


def test_coco_category_names_are_torchvision_categories():
    tv = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # "__background__", then ids 1..90
    assert len(COCO_CATEGORY_NAMES) == 90 and sum(n is not None for n in COCO_CATEGORY_NAMES) == 80
    assert [n or "N/A" for n in COCO_CATEGORY_NAMES] == tv[1:]


def test_torchvision_coco_checkpoint_into_three_classes(torchvision_checkpoints, caplog):
    state, root = torchvision_checkpoints
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = _build("faster_rcnn_r50_fpn", num_classes=3, weights=str(root / "faster.pth"))
    fresh = _build("faster_rcnn_r50_fpn", num_classes=3).state_dict()
    converted = convert_torchvision_detector(model, state)
    loaded = model.state_dict()
    # every parameter fits but the class-specific ones
    assert _differing(loaded, converted) == BOX_KEYS
    # no class names given: only the background rows come from the checkpoint
    for layer, per in (("cls_score", 1), ("bbox_pred", 4)):
        for p in ("weight", "bias"):
            key = f"{TV_PREDICTOR}.{layer}.{p}"
            assert torch.equal(loaded[key][:per], state[key][:per])
            assert torch.equal(loaded[key][per:], fresh[key][per:])
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "\n" not in record.getMessage()
    message = record.getMessage()
    assert "90 checkpoint classes -> 3 classes of faster_rcnn_r50_fpn" in message
    assert all(k in message for k in BOX_KEYS) and "except the background rows (no class_names given" in message


def test_torchvision_mask_rcnn_rows_carried_by_coco_name(torchvision_checkpoints, caplog):
    state, root = torchvision_checkpoints
    names = ["person", " dog ", "not-a-coco-class"]  # COCO ids 1 and 18; names match after strip()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = _build("mask_rcnn_r50_fpn", num_classes=3, weights=str(root / "mask.pth"), class_names=names)
    fresh = _build("mask_rcnn_r50_fpn", num_classes=3).state_dict()
    loaded = model.state_dict()
    converted = convert_torchvision_detector(model, state)
    assert _differing(loaded, converted) == BOX_KEYS | MASK_KEYS
    for layer, per in (("cls_score", 1), ("bbox_pred", 4)):
        for p in ("weight", "bias"):
            key = f"{TV_PREDICTOR}.{layer}.{p}"
            # background, person (id 1), dog (id 18) at rows 0, 1, 2; the third class is new
            assert torch.equal(_rows(loaded[key], [0, 1, 2], per), _rows(state[key], [0, 1, 18], per))
            assert torch.equal(_rows(loaded[key], [3], per), _rows(fresh[key], [3], per))
    for p in ("weight", "bias"):
        key = f"roi_heads.mask_head.mask_logits.{p}"
        tv_key = f"{TV_MASK_LOGITS}.{p}"  # torchvision's channel 0 is an unused background channel
        assert torch.equal(loaded[key][:2], state[tv_key][[1, 18]])
        assert torch.equal(loaded[key][2], fresh[key][2])
    [record] = caplog.records
    message = record.getMessage()
    assert all(k in message for k in BOX_KEYS | MASK_KEYS)
    assert "'person' (1 -> 1), 'dog' (18 -> 2)" in message and "new classes 'not-a-coco-class' (3)" in message


def _lightning_checkpoint(path, model, class_names):
    torch.save(
        {
            "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
            "detkit": {"class_names": class_names, "num_classes": len(class_names)},
        },
        path,
    )


def test_detkit_checkpoint_rows_carried_by_name(tmp_path, caplog):
    trained = _build("faster_rcnn_tiny", seed=1, num_classes=3)
    old = trained.state_dict()
    _lightning_checkpoint(tmp_path / "last.ckpt", trained, ["circle", "square", "triangle"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = _build(
            "faster_rcnn_tiny", num_classes=2, weights=tmp_path / "last.ckpt", class_names=["triangle", "star"]
        )
    fresh = _build("faster_rcnn_tiny", num_classes=2).state_dict()
    loaded = model.state_dict()
    assert _differing({k: v for k, v in loaded.items() if k not in BOX_KEYS}, old) == set()
    for layer, per in (("cls_score", 1), ("bbox_pred", 4)):
        for p in ("weight", "bias"):
            key = f"{TV_PREDICTOR}.{layer}.{p}"
            assert torch.equal(_rows(loaded[key], [0, 1], per), _rows(old[key], [0, 3], per))
            assert torch.equal(_rows(loaded[key], [2], per), _rows(fresh[key], [2], per))
    [record] = caplog.records
    assert "'triangle' (3 -> 1)" in record.getMessage() and "new classes 'star' (2)" in record.getMessage()
    assert model.predict([torch.rand(3, 64, 80)])[0]["scores"].shape[0] >= 0


@pytest.mark.parametrize("classifier", ["softmax", "svm"])
def test_rcnn_rows_carried_by_name(tmp_path, classifier, caplog):
    """R-CNN: box deltas without a background row; SVM scores have none either."""
    trained = _build("rcnn_tiny", seed=1, num_classes=3, classifier=classifier)
    old = trained.state_dict()
    _lightning_checkpoint(tmp_path / "r.ckpt", trained, ["a", "b", "c"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = _build("rcnn_tiny", num_classes=3, weights=tmp_path / "r.ckpt", class_names=["c", "new", "a"],
                       classifier=classifier)  # fmt: skip
    fresh = _build("rcnn_tiny", num_classes=3, classifier=classifier).state_dict()
    loaded = model.state_dict()
    background = [0] if classifier == "softmax" else []
    shift = len(background)
    for layer, per, bg in (("cls_score", 1, background), ("bbox_pred", 4, [])):
        s = shift if layer == "cls_score" else 0
        for p in ("weight", "bias"):
            key = f"{layer}.{p}"
            # new class 1 = old "c" (3), new class 3 = old "a" (1), new class 2 is new
            assert torch.equal(_rows(loaded[key], [*bg, s, s + 2], per), _rows(old[key], [*bg, s + 2, s], per))
            assert torch.equal(_rows(loaded[key], [s + 1], per), _rows(fresh[key], [s + 1], per))
    assert not _differing({k: v for k, v in loaded.items() if not k.startswith(("cls_score", "bbox_pred"))}, old)
    [record] = caplog.records
    assert "3 checkpoint classes -> 3 classes of rcnn_tiny" in record.getMessage()


def test_fast_rcnn_plain_state_dict_other_class_count(tmp_path, caplog):
    """A plain state dict names no classes: with another class count only the background rows are kept."""
    old = _build("fast_rcnn_tiny", seed=1, num_classes=4).state_dict()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = _build("fast_rcnn_tiny", num_classes=2, weights=old, class_names=["x", "y"])
    fresh = _build("fast_rcnn_tiny", num_classes=2).state_dict()
    loaded = model.state_dict()
    for key in BOX_KEYS:
        per = 4 if "bbox_pred" in key else 1
        assert torch.equal(loaded[key][:per], old[key][:per]) and torch.equal(loaded[key][per:], fresh[key][per:])
    assert not _differing({k: v for k, v in loaded.items() if k not in BOX_KEYS}, old)
    [record] = caplog.records
    assert "the checkpoint records no class names" in record.getMessage()


def test_mask_rcnn_tiny_other_class_count_by_name(tmp_path, caplog):
    trained = _build("mask_rcnn_tiny", seed=1, num_classes=2)
    old = trained.state_dict()
    _lightning_checkpoint(tmp_path / "m.ckpt", trained, ["cat", "dog"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = _build("mask_rcnn_tiny", num_classes=3, weights=tmp_path / "m.ckpt", class_names=["dog", "cow", "cat"])
    fresh = _build("mask_rcnn_tiny", num_classes=3).state_dict()
    loaded = model.state_dict()
    for p in ("weight", "bias"):
        key = f"roi_heads.mask_head.mask_logits.{p}"  # no background channel: old 0 = cat, 1 = dog
        assert torch.equal(loaded[key][[0, 2]], old[key][[1, 0]]) and torch.equal(loaded[key][1], fresh[key][1])
    assert not _differing({k: v for k, v in loaded.items() if k not in BOX_KEYS | MASK_KEYS}, old)
    assert len(caplog.records) == 1


@pytest.mark.parametrize("class_names", [None, ["circle", "square", "triangle"], [" circle", "square ", "triangle"]])
def test_same_classes_load_exactly_and_quietly(tmp_path, class_names, caplog):
    trained = _build("mask_rcnn_tiny", seed=1, num_classes=3)
    _lightning_checkpoint(tmp_path / "same.ckpt", trained, ["circle", "square", "triangle"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = _build("mask_rcnn_tiny", num_classes=3, weights=tmp_path / "same.ckpt", class_names=class_names)
    assert not _differing(model.state_dict(), trained.state_dict())
    assert not caplog.records


def test_same_count_other_names_are_matched_by_name(tmp_path, caplog):
    trained = _build("faster_rcnn_tiny", seed=1, num_classes=2)
    old = trained.state_dict()
    _lightning_checkpoint(tmp_path / "two.ckpt", trained, ["cat", "dog"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = _build("faster_rcnn_tiny", num_classes=2, weights=tmp_path / "two.ckpt", class_names=["dog", "cat"])
    key = f"{TV_PREDICTOR}.cls_score.weight"
    assert torch.equal(model.state_dict()[key], old[key][[0, 2, 1]])
    assert len(caplog.records) == 1


def test_other_shapes_outside_the_class_layers_are_one_line_errors(tmp_path):
    old = _build("faster_rcnn_tiny", seed=1, num_classes=3, representation_size=128).state_dict()
    torch.save(old, tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"narrow\.pth: shapes do not match faster_rcnn_tiny .*box_head\.fc6") as e:
        build_model("faster_rcnn_tiny", num_classes=2, weights=str(tmp_path / "narrow.pth"))
    assert "\n" not in str(e.value)
    # R-CNN with softmax (K+1 score rows) into SVM scores (K rows): the class counts disagree
    softmax = _build("rcnn_tiny", num_classes=3).state_dict()
    with pytest.raises(ValueError, match=r"match rcnn_tiny: .* agree on no class count.*cls_score\.weight"):
        build_model("rcnn_tiny", num_classes=3, classifier="svm", weights=softmax)


def test_class_name_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"class_names must be a list of num_classes=2 names"):
        build_model("faster_rcnn_tiny", num_classes=2, class_names=["a"])
    trained = _build("faster_rcnn_tiny", seed=1, num_classes=3)
    _lightning_checkpoint(tmp_path / "bad.ckpt", trained, ["a", "b"])
    with pytest.raises(ValueError, match=r"bad\.ckpt: the checkpoint records 2 class names for 3 classes"):
        build_model("faster_rcnn_tiny", num_classes=2, weights=tmp_path / "bad.ckpt", class_names=["a", "b"])


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("faster_rcnn_tiny", {}), ("mask_rcnn_tiny", {}), ("fast_rcnn_tiny", {}), ("rcnn_tiny", {}),
     ("rcnn_tiny", {"classifier": "svm"})],
)  # fmt: skip
def test_class_rows_declare_num_classes(name, kwargs):
    """The declared layouts account for every row of the class-specific parameters."""
    for k in (1, 4):
        model = build_model(name, num_classes=k, **kwargs)
        state = model.state_dict()
        layouts = model.class_rows()
        assert layouts and set(layouts) <= set(state)
        for key, layout in layouts.items():
            assert state[key].shape[0] == (k + layout.background) * layout.per_class, key
