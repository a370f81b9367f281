"""Two-stage detectors: backbone -> proposals (RPN or given) -> RoI heads.

Calling convention (as torchvision's detection models):
    losses = model(images, targets)       # dict of named scalar losses, any mode
    detections = model.predict(images)    # one dict per image, original-image pixels

`images` is a list of float 0..1 RGB Tensor[3, H, W]; `targets` one dict per image with
`boxes` Tensor[K, 4] XYXY pixels, `labels` int64 Tensor[K] in 1..num_classes and, for Mask
R-CNN, `masks` uint8 Tensor[K, H, W]. Images without boxes are valid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Sequence

import torch
from torch import Tensor, nn

from detkit.heads.roi_heads import RoIHeads
from detkit.models.transform import DetectionTransform, resize_boxes
from detkit.proposals.rpn import RPN
from detkit.structures import ImageBatch, PackedTargets


def prepare_inputs(
    transform: DetectionTransform, images: Sequence[Tensor], targets: Sequence[dict] | None, num_classes: int
) -> tuple[ImageBatch, PackedTargets | None]:
    """Validate, resize, normalise and pack images and targets; boxes move to the batch's pixels.

    Shared by every detector: checks one target per image and labels in 1..num_classes.
    """
    batch = transform(images)
    if targets is None:
        return batch, None
    if len(targets) != batch.num_images:
        raise ValueError(
            f"got {batch.num_images} images but {len(targets)} targets: expected one target dict per image"
        )
    packed = PackedTargets.from_list(list(targets), device=batch.tensor.device)
    labels = packed.labels
    out_of_range = (labels < 1) | (labels > num_classes)
    if labels.numel() and bool(out_of_range.any()):  # one host sync
        bad = labels[out_of_range][0].item()
        raise ValueError(f"target labels must be in 1..{num_classes} (0 is background), got {bad}")
    packed.boxes = resize_boxes(packed.boxes.float(), packed.batch_idx, batch.original_sizes, batch.image_sizes)
    return batch, packed


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Run a block with `model` in eval mode and give every submodule its own mode back after.

    `predict` uses it so that predicting never changes the model (a model in training mode
    would otherwise update BatchNorm statistics and apply dropout).
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def targets_required(model: nn.Module) -> ValueError:
    """The error of `model(images)` without targets in training mode (torchvision raises too)."""
    return ValueError(
        f"{type(model).__name__} is in training mode and got no targets: pass targets (one dict per "
        "image) for the losses, or call model.eval() / model.predict(images) for detections"
    )


class TwoStageDetector(nn.Module):
    """Faster R-CNN when `rpn` is set; Fast R-CNN (external proposals) when it is None."""

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

    # ----------------------------------------------------------------- inputs
    def prepare(
        self, images: Sequence[Tensor], targets: Sequence[dict] | None = None
    ) -> tuple[ImageBatch, PackedTargets | None]:
        """Validate, resize, normalise and pack images and targets (boxes move to resized pixels)."""
        batch, packed = prepare_inputs(self.transform, images, targets, self.num_classes)
        if packed is not None and self.roi_heads.has_mask and self.training and packed.masks is None:
            raise ValueError("Mask R-CNN training needs targets[i]['masks'] (uint8 Tensor[K, H, W])")
        return batch, packed

    def _proposals(self, features, batch, packed, proposals):
        if self.rpn is not None:
            return self.rpn(features, batch, packed)
        if proposals is None:
            raise ValueError(
                f"{type(self).__name__} has no RPN: pass `proposals` (one Tensor[P, 4] per image, original pixels)"
            )
        if len(proposals) != batch.tensor.shape[0]:
            raise ValueError(f"got {batch.tensor.shape[0]} images but {len(proposals)} proposal sets")
        boxes = [torch.as_tensor(p, dtype=torch.float32, device=batch.tensor.device).reshape(-1, 4) for p in proposals]
        batch_idx = torch.cat(
            [torch.full((len(b),), i, dtype=torch.int64, device=batch.tensor.device) for i, b in enumerate(boxes)]
        )
        boxes = resize_boxes(torch.cat(boxes), batch_idx, batch.original_sizes, batch.image_sizes)
        return boxes, batch_idx, {}

    # ----------------------------------------------------------------- API
    def forward(self, images: Sequence[Tensor], targets: Sequence[dict] | None = None, *, proposals=None):
        """Losses when `targets` is given (training or validation loss), else `predict(images)`.

        In training mode `targets` are required (ValueError), as in torchvision.
        """
        if targets is None:
            if self.training:
                raise targets_required(self)
            return self.predict(images, proposals=proposals)
        return self.compute_losses(images, targets, proposals=proposals)

    def compute_losses(self, images: Sequence[Tensor], targets: Sequence[dict], *, proposals=None) -> dict[str, Tensor]:
        batch, packed = self.prepare(images, targets)
        features = self.backbone(batch.tensor)
        boxes, batch_idx, losses = self._proposals(features, batch, packed, proposals)
        _, head_losses = self.roi_heads(features, boxes, batch_idx, batch, packed)
        return {**losses, **head_losses}

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], *, proposals=None) -> list[dict[str, Tensor]]:
        """One dict per image: `boxes` Tensor[D, 4], `scores` [D], `labels` int64 [D] (and `masks` uint8 [D, H, W]).

        Runs in eval mode whatever the model's mode, and leaves the mode as it was.
        """
        with evaluation_mode(self):
            return self._predict(images, proposals=proposals)

    def _predict(self, images: Sequence[Tensor], *, proposals=None) -> list[dict[str, Tensor]]:
        batch, _ = self.prepare(images)
        features = self.backbone(batch.tensor)
        boxes, batch_idx, _ = self._proposals(features, batch, None, proposals)
        dets, _ = self.roi_heads(features, boxes, batch_idx, batch)
        dets.boxes = resize_boxes(dets.boxes, dets.batch_idx, batch.image_sizes, batch.original_sizes)
        if dets.masks is not None:
            dets.masks = self.roi_heads.paste_masks(dets.masks, dets.boxes, dets.batch_idx, batch.original_sizes)
        return dets.split()
