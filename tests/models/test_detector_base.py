"""The detector base (detkit.models.base.Detector)."""

import pytest
import torch

from detkit.models import Detector
from detkit.models.base import validate_proposals
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
