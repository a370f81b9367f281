"""The detector base (detkit.models.base.Detector) and the part builders of detkit.models.builders."""

import pytest
import torch

from detkit.backbones import build_backbone
from detkit.models import Detector, build_model
from detkit.models.base import validate_proposals
from detkit.models.builders import (
    build_roi_heads,
    build_rpn,
    build_transform,
    build_two_stage,
    check_features,
    default_freeze_at,
    split_kwargs,
)
from detkit.models.fast_rcnn import BackgroundBandMatcher
from detkit.models.transform import DetectionTransform
from detkit.structures import Detections


class BoxEcho(Detector):
    """A detector without a network: it returns its (packed, batch-pixel) proposals as detections.

    Enough to check what the base does around `batch_losses` / `batch_detections`.
    """

    def __init__(self):
        super().__init__()
        self.transform = DetectionTransform(min_size=64, max_size=None, size_divisible=1)
        self.num_classes = 2
        self.norm = torch.nn.BatchNorm1d(1)
        self.seen = {}

    @property
    def requires_proposals(self) -> bool:
        return True

    def batch_losses(self, batch, targets, *, proposals=None):
        self.seen["targets"] = targets
        return {"loss": self.norm.weight.sum() * 0.0}

    def batch_detections(self, batch, *, proposals=None):
        self.seen["training"] = self.training
        boxes, batch_idx = self.pack_proposals(proposals, batch)
        self.seen["packed"] = boxes
        return Detections(
            boxes=boxes,
            scores=torch.ones(len(boxes)),
            labels=torch.ones(len(boxes), dtype=torch.int64),
            batch_idx=batch_idx,
            num_images=batch.num_images,
        ).resize(batch.image_sizes, batch.original_sizes)


def test_the_base_dispatches_checks_inputs_and_packs_proposals():
    model = BoxEcho()
    images = [torch.rand(3, 32, 48), torch.rand(3, 16, 16)]  # resized to shorter side 64: x2 and x4
    proposals = [torch.tensor([[2.0, 4.0, 10.0, 12.0], [5.0, 5.0, 5.0, 9.0]]), torch.tensor([[1.0, 1.0, 3.0, 2.0]])]
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]

    model.train()
    with pytest.raises(ValueError, match="BoxEcho is in training mode and got no targets"):
        model(images, proposals=proposals)
    assert set(model(images, targets, proposals=proposals)) == {"loss"}
    assert torch.equal(model.seen["targets"].boxes, torch.tensor([[0.0, 0.0, 16.0, 16.0]]))  # batch pixels
    with pytest.raises(ValueError, match=r"target labels must be in 1\.\.2"):
        model(images, [targets[0], {"boxes": torch.ones(1, 4), "labels": torch.tensor([3])}], proposals=proposals)

    out = model.predict(images, proposals=proposals)
    assert model.seen["training"] is False and model.training and model.norm.training  # modes given back
    # the zero-height proposal is dropped; packed boxes are in the batch's pixels, results in the original's
    assert torch.equal(model.seen["packed"], torch.tensor([[4.0, 8.0, 20.0, 24.0], [4.0, 4.0, 12.0, 8.0]]))
    assert torch.equal(out[0]["boxes"], proposals[0][:1]) and torch.equal(out[1]["boxes"], proposals[1])
    model.eval()
    assert len(model(images, proposals=proposals)) == 2  # eval mode without targets: detections
    with pytest.raises(ValueError, match="BoxEcho needs region proposals"):
        model.predict(images)
    assert model.requires_proposals and not model.has_masks


def test_the_base_is_abstract():
    class Incomplete(Detector):
        def batch_losses(self, batch, targets, *, proposals=None):
            return {}

    with pytest.raises(TypeError, match="batch_detections"):
        Incomplete()


def test_validate_proposals_error_names_an_importable_path():
    with pytest.raises(ValueError, match=r"detkit\.data\.WithProposals") as err:
        validate_proposals(None, 1, owner="X")
    assert "target['proposals'] of detkit.data.WithProposals" in str(err.value)
    pytest.importorskip("cv2")  # WithProposals reads caches written with OpenCV's extra installed
    from detkit.data import WithProposals
    from detkit.data.proposals import WithProposals as defined

    assert WithProposals is defined


def test_builder_helpers():
    assert default_freeze_at(None, None) == 0 and default_freeze_at(None, "w.pth") == 2
    assert default_freeze_at(None, "w.pth", 1) == 1 and default_freeze_at(3, None) == 3
    specs = build_backbone("simple_convnet", out_features=("c2", "c3")).feature_specs()
    assert check_features(specs, ("c3",)) == ["c3"]
    with pytest.raises(ValueError, match=r"feature 'c5' is not an output of the backbone; it has \['c2', 'c3'\]"):
        check_features(specs, ["c3", "c5"])

    def a(x, *, p=1, q=2):
        return x

    def b(*, q=3, r=4):
        return None

    assert split_kwargs("f", {"p": 1, "q": 5, "r": 0}, a, b) == [{"p": 1, "q": 5}, {"q": 5, "r": 0}]
    with pytest.raises(TypeError, match=r"^f\(\) got an unexpected keyword argument 'x'$"):
        split_kwargs("f", {"x": 1}, a, b)  # positional parameters are not dealt out


def test_two_stage_builder_deals_its_keywords_to_the_parts():
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
    with pytest.raises(TypeError, match="build_two_stage\\(\\) got an unexpected keyword argument 'rpn_nms_thresh'"):
        build_two_stage(backbone, num_classes=2, anchor_sizes=((16,),), rpn_nms_thresh=0.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'rpn_nms_thresh'"):
        build_model("faster_rcnn_tiny", num_classes=2, rpn_nms_thresh=0.5)  # registered builders too

    # the parts on their own
    rpn = build_rpn(backbone, anchor_sizes=((16, 32),), rpn_nms_threshold=0.6)
    assert rpn.nms_threshold == 0.6 and rpn.in_features == ["c3"]
    heads = build_roi_heads(backbone, num_classes=2, with_mask=True, mask_conv_dims=(8,), box_resolution=5)
    assert heads.has_masks and heads.box_pooler.output_size == 5 and heads.mask_pooler.output_size == 14
    assert build_transform(min_size=None).min_size is None
    without_rpn = build_two_stage(backbone, num_classes=2, with_rpn=False)
    assert without_rpn.rpn is None and without_rpn.requires_proposals


def test_fast_rcnn_gives_its_matcher_and_beta_to_the_roi_heads():
    model = build_model("fast_rcnn_tiny", num_classes=2, roi_bg_iou_low=0.2, smooth_l1_beta=0.25)
    matcher = model.roi_heads.matcher
    assert isinstance(matcher, BackgroundBandMatcher) and matcher.bg_iou_low == 0.2
    assert model.roi_heads.smooth_l1_beta == 0.25
    # RPN keywords stay accepted (there is no RPN to use them), as before the split
    assert build_model("fast_rcnn_tiny", num_classes=2, rpn_nms_threshold=0.5).rpn is None
    with pytest.raises(TypeError, match=r"build_fast_rcnn\(\) got an unexpected keyword argument 'bogus'"):
        build_model("fast_rcnn_tiny", num_classes=2, bogus=1)
