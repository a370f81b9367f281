"""Two-stage detectors: backbone -> proposals (RPN or given) -> RoI heads.

Faster / Mask / Keypoint R-CNN when the model has an RPN; Fast R-CNN (external proposals, see
`detkit.models.base` for the calling convention) when it has none.
"""

from __future__ import annotations

from torch import Tensor, nn

from detkit.heads.roi_heads import RoIHeads
from detkit.models.base import Detector
from detkit.models.transform import DetectionTransform
from detkit.proposals.rpn import RPN
from detkit.structures import Detections, ImageBatch, PackedTargets

__all__ = ["TwoStageDetector"]


class TwoStageDetector(Detector):
    """Faster R-CNN when `rpn` is set (Mask / Keypoint R-CNN with a mask / keypoint head); Fast R-CNN
    (external proposals) when it is None."""

    def __init__(
        self,
        backbone: nn.Module,
        roi_heads: RoIHeads,
        *,
        rpn: RPN | None = None,
        transform: DetectionTransform | None = None,
        num_classes: int,
    ):
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = backbone, rpn, roi_heads
        self.transform = transform if transform is not None else DetectionTransform()
        self.num_classes = num_classes

    @property
    def has_masks(self) -> bool:
        return self.roi_heads.has_masks

    @property
    def has_keypoints(self) -> bool:
        return self.roi_heads.has_keypoints

    @property
    def num_keypoints(self) -> int:
        return self.roi_heads.num_keypoints

    @property
    def requires_proposals(self) -> bool:
        return self.rpn is None

    def region_proposals(
        self, features: dict[str, Tensor], batch: ImageBatch, targets: PackedTargets | None, proposals
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Packed proposals (boxes `Tensor[B, 4]` in the batch's pixels, `batch_idx` `Tensor[B]`) and the RPN's losses.

        From the RPN when the model has one (`proposals` is then ignored), else `proposals` validated and packed.
        """
        if self.rpn is not None:
            return self.rpn(features, batch, targets)
        return *self.pack_proposals(proposals, batch), {}

    def batch_losses(self, batch: ImageBatch, targets: PackedTargets, *, proposals=None) -> dict[str, Tensor]:
        features = self.backbone(batch.tensor)
        boxes, batch_idx, losses = self.region_proposals(features, batch, targets, proposals)
        _, head_losses = self.roi_heads(features, boxes, batch_idx, batch, targets)
        return {**losses, **head_losses}

    def batch_detections(self, batch: ImageBatch, *, proposals=None) -> Detections:
        features = self.backbone(batch.tensor)
        boxes, batch_idx, _ = self.region_proposals(features, batch, None, proposals)
        dets, _ = self.roi_heads(features, boxes, batch_idx, batch)
        dets = dets.resize(batch.image_sizes, batch.original_sizes)  # boxes (and keypoints) to original pixels
        if dets.mask_probs is not None:
            dets.masks = self.roi_heads.paste_detection_masks(
                dets.mask_probs, dets.boxes, dets.batch_idx, batch.original_sizes
            )
        return dets
