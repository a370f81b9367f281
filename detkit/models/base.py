"""The detector base: what every detkit detector shares and declares.

Calling convention (as torchvision's detection models):
    losses = model(images, targets)       # dict of named scalar losses, any mode
    detections = model.predict(images)    # one dict per image, original-image pixels
    detections = model.predict(images, precision="bf16")  # convolutions / products in bfloat16

`images` is a list of float 0..1 RGB Tensor[3, H, W]; `targets` one dict per image with
`boxes` Tensor[K, 4] XYXY pixels, `labels` int64 Tensor[K] in 1..num_classes and, for Mask
R-CNN, `masks` uint8 Tensor[K, H, W]; for Keypoint R-CNN, `keypoints` float32 Tensor[K, Kp, 3]
(x, y, v) in pixels, v as COCO (0 not labelled, 1 / 2 labelled). Images without boxes are valid. A detector fed with
external proposals (`requires_proposals`) also takes `proposals=`: one Tensor[P_i, 4] XYXY
per image in original-image pixels (e.g. `target["proposals"]` of `detkit.data.WithProposals`).

`Detector` validates and packs the inputs, sends `forward` to the losses or the detections,
runs `predict` in eval mode, and declares what the model is (`has_masks`, `class_rows`,
`requires_proposals`) so that callers never look into its parts. A subclass sets
`transform` and `num_classes` and implements `batch_losses` and `batch_detections` on the
prepared `ImageBatch`.

Shape shorthand: N images, K gt boxes, P proposals per image, B proposals of the batch.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from typing import Sequence

import torch
from torch import Tensor, nn

from detkit.heads.box_head import ClassRows
from detkit.models.transform import DetectionTransform
from detkit.structures import Detections, ImageBatch, PackedTargets
from detkit.structures.packed import resize_boxes, resize_keypoints

__all__ = [
    "INFERENCE_PRECISIONS",
    "Detector",
    "evaluation_mode",
    "inference_autocast",
    "prepare_inputs",
    "targets_required",
    "validate_proposals",
]

INFERENCE_PRECISIONS = ("fp32", "bf16")

PROPOSALS_FORM = (
    "one Tensor[P, 4] XYXY per image, in original-image pixels (e.g. target['proposals'] of detkit.data.WithProposals)"
)


def prepare_inputs(
    transform: DetectionTransform, images: Sequence[Tensor], targets: Sequence[dict] | None, num_classes: int
) -> tuple[ImageBatch, PackedTargets | None]:
    """Validate, resize, normalise and pack images and targets; boxes move to the batch's pixels.

    Checks one target per image and labels in 1..num_classes.
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
    if packed.keypoints is not None:  # scaled with the boxes
        packed.keypoints = resize_keypoints(packed.keypoints, packed.batch_idx, batch.original_sizes, batch.image_sizes)
    return batch, packed


def inference_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context detections run in at `precision` (one of INFERENCE_PRECISIONS).

    "fp32" adds nothing (the model's own dtypes; an enclosing autocast, e.g. Lightning's
    bf16-mixed, still applies). "bf16" is `torch.autocast(device, bfloat16)`: convolutions and
    matrix products in bfloat16; box decoding, IoU, RoIAlign, scores and NMS stay float32 as in
    training (their code casts and disables autocast), so detections come out in float32.
    bf16 pays on CPUs with native bfloat16 arithmetic (AVX512-BF16, AMX) and on GPUs; without
    it, oneDNN emulates it and runs slower than fp32.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {INFERENCE_PRECISIONS}, got {precision!r}")


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


def validate_proposals(proposals, num_images: int, *, owner: str = "this model", device=None) -> list[Tensor]:
    """Check external proposals and return them as float32 `Tensor[P_i, 4]` on `device`.

    Expects one `Tensor[P_i, 4]` (or array) XYXY per image, in original-image pixels, with
    finite values and x2 >= x1, y2 >= y1; raises ValueError naming what is expected.
    Boxes of zero width or height are dropped.
    """
    if proposals is None:
        raise ValueError(f"{owner} needs region proposals: pass proposals= as {PROPOSALS_FORM}")
    if isinstance(proposals, Tensor) or not isinstance(proposals, Sequence):
        raise ValueError(f"proposals must be a list with {PROPOSALS_FORM}; got {type(proposals).__name__}")
    if len(proposals) != num_images:
        raise ValueError(f"got {num_images} images but {len(proposals)} proposal sets: expected {PROPOSALS_FORM}")
    out = []
    for i, p in enumerate(proposals):
        try:
            p = torch.as_tensor(p, dtype=torch.float32, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"proposals[{i}] must be a Tensor[P, 4], got {type(p).__name__}") from None
        if p.numel() == 0:
            p = p.reshape(0, 4)
        if p.dim() != 2 or p.shape[1] != 4:
            raise ValueError(f"proposals[{i}] must have shape [P, 4] (XYXY), got {tuple(p.shape)}")
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"proposals[{i}] contains non-finite values")
        wh = p[:, 2:] - p[:, :2]
        if bool((wh < 0).any()):
            raise ValueError(f"proposals[{i}] must be XYXY with x2 >= x1 and y2 >= y1 (is it XYWH?)")
        out.append(p[(wh > 0).all(1)])
    return out


class Detector(nn.Module, abc.ABC):
    """Base of every detkit detector: input checks, the losses / detections dispatch, what it declares.

    Subclasses set `transform` (a `DetectionTransform`) and `num_classes` (K, background
    excluded) and implement `batch_losses` and `batch_detections`.
    """

    transform: DetectionTransform
    num_classes: int

    # ------------------------------------------------------------------ what the model is
    @property
    def has_masks(self) -> bool:
        """True when `predict` returns instance `masks` and training needs `targets[i]["masks"]`."""
        return False

    @property
    def has_keypoints(self) -> bool:
        """True when `predict` returns `keypoints` / `keypoints_scores` and training needs `targets[i]["keypoints"]`."""
        return False

    @property
    def num_keypoints(self) -> int:
        """Keypoints per object that `predict` returns (0 for a model without keypoints)."""
        return 0

    @property
    def requires_proposals(self) -> bool:
        """True when the model takes external `proposals=` (one Tensor[P_i, 4] per image) instead of making them."""
        return False

    def class_rows(self) -> dict[str, ClassRows]:
        """The class-specific parameters (state-dict keys) and how their rows map to classes.

        Gathered from the submodules that declare theirs with a `class_rows()` method (the box
        predictor, the mask head); what fine-tuning to other classes re-initialises or carries
        over row by row (`detkit.models.weights.load_detector_weights`).
        """
        rows: dict[str, ClassRows] = {}
        declared: list[str] = []
        for prefix, module in self.named_modules():
            if module is self or not callable(getattr(module, "class_rows", None)):
                continue
            if not any(prefix.startswith(p + ".") for p in declared):  # not inside a declaring module
                declared.append(prefix)
                rows |= {f"{prefix}.{name}": layout for name, layout in module.class_rows().items()}
        return rows

    # ------------------------------------------------------------------ inputs
    def prepare(
        self, images: Sequence[Tensor], targets: Sequence[dict] | None = None
    ) -> tuple[ImageBatch, PackedTargets | None]:
        """Validate, resize, normalise and pack images and targets (boxes move to the batch's pixels)."""
        batch, packed = prepare_inputs(self.transform, images, targets, self.num_classes)
        if packed is not None and self.has_masks and self.training and packed.masks is None:
            raise ValueError("Mask R-CNN training needs targets[i]['masks'] (uint8 Tensor[K, H, W])")
        if packed is not None and self.has_keypoints and self.training:
            if packed.keypoints is None:
                raise ValueError("Keypoint R-CNN training needs targets[i]['keypoints'] (float Tensor[K, Kp, 3])")
            if packed.keypoints.shape[1] != self.num_keypoints:
                raise ValueError(
                    f"targets[i]['keypoints'] have {packed.keypoints.shape[1]} keypoints per object but the model "
                    f"predicts {self.num_keypoints} (num_keypoints)"
                )
        return batch, packed

    def pack_proposals(self, proposals, batch: ImageBatch) -> tuple[Tensor, Tensor]:
        """Validated external proposals, packed: boxes `Tensor[B, 4]` in the batch's pixels, `batch_idx` `Tensor[B]`."""
        device = batch.tensor.device
        boxes = validate_proposals(proposals, batch.num_images, owner=type(self).__name__, device=device)
        batch_idx = torch.repeat_interleave(
            torch.arange(len(boxes), device=device), torch.tensor([len(b) for b in boxes], device=device)
        )
        packed = torch.cat(boxes) if boxes else torch.zeros((0, 4), device=device)
        return resize_boxes(packed, batch_idx, batch.original_sizes, batch.image_sizes), batch_idx

    # ------------------------------------------------------------------ API
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
        """Dict of named scalar losses, in the model's current mode (eval mode: a validation loss)."""
        batch, packed = self.prepare(images, targets)
        return self.batch_losses(batch, packed, proposals=proposals)

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], *, proposals=None, precision: str = "fp32") -> list[dict[str, Tensor]]:
        """One dict per image: `boxes` Tensor[D, 4], `scores` [D], `labels` int64 [D] (and `masks` uint8 [D, H, W]).

        Runs in eval mode whatever the model's mode, and leaves the mode as it was. `precision`
        "bf16" runs the network under bfloat16 autocast (see `inference_autocast`); boxes and
        scores are float32 either way. The input checks and resizing run in float32.
        """
        if not isinstance(images, (Tensor, list, tuple)):
            raise TypeError(f"images must be a list of Tensor[3, H, W] (or a Tensor[N, 3, H, W]), got {type(images)}")
        with evaluation_mode(self):
            batch, _ = self.prepare(images)
            with inference_autocast(batch.tensor.device, precision):
                return self.batch_detections(batch, proposals=proposals).split()

    @abc.abstractmethod
    def batch_losses(self, batch: ImageBatch, targets: PackedTargets, *, proposals=None) -> dict[str, Tensor]:
        """The losses of a prepared batch and its packed targets (boxes in the batch's pixels)."""

    @abc.abstractmethod
    def batch_detections(self, batch: ImageBatch, *, proposals=None) -> Detections:
        """The detections of a prepared batch, in original-image pixels."""
