"""Losses chosen by name: what the detector heads call, so one setting switches a head's loss.

Box regression (`BOX_LOSSES`): "smooth_l1" (default; Fast R-CNN / torchvision) and "l1" on encoded
deltas; "giou", "diou", "ciou" (Rezatofighi et al. 2019; Zheng et al. 2020) on decoded XYXY boxes:
the head decodes its predicted deltas against the same reference boxes (proposals or anchors) and
compares them with the matched ground-truth boxes.

Classification (`CLS_LOSSES`): "ce" (default: softmax cross-entropy for the box classifier,
sigmoid cross-entropy for objectness) or "focal" (Lin et al. 2017: softmax focal for the box
classifier, sigmoid focal without the alpha balance for the already balanced RPN samples).

Shape shorthand: P positives, R sampled RoIs, K classes (K + 1 logits with the background).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .classification import binary_cross_entropy_with_logits, cross_entropy, sigmoid_focal_loss
from .reduction import check_reduction, reduce_loss
from .regression import ciou_loss, diou_loss, giou_loss, l1_loss, smooth_l1_loss

BOX_LOSSES = ("smooth_l1", "l1", "giou", "diou", "ciou")
"""Names `box_loss` accepts: smooth L1 and L1 on the encoded deltas, GIoU / DIoU / CIoU on decoded boxes."""
CLS_LOSSES = ("ce", "focal")
"""Names `cls_loss` accepts: softmax cross-entropy, focal loss."""
_IOU_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


def check_loss_name(name: str, choices: tuple[str, ...], what: str) -> str:
    """`name` if it is one of `choices`, else ValueError naming `what` and the choices."""
    if name not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {name!r}")
    return name


def uses_decoded_boxes(name: str) -> bool:
    """True for the IoU losses, which compare decoded boxes instead of deltas."""
    return check_loss_name(name, BOX_LOSSES, "box loss") in _IOU_LOSSES


def box_regression_loss(
    name: str, pred: Tensor, target: Tensor, *, beta: float = 1.0, reduction: str = "sum"
) -> Tensor:
    """Box loss `name` between `pred` and `target`, both `Tensor[P, 4]`.

    Deltas for "smooth_l1" (switch point `beta`) and "l1", decoded XYXY boxes for the IoU losses
    (see `uses_decoded_boxes`); the IoU losses give one value per box, the others one per coordinate.
    """
    check_reduction(reduction)
    if uses_decoded_boxes(name):
        return _IOU_LOSSES[name](pred, target, reduction=reduction)
    if name == "l1":
        return l1_loss(pred, target, reduction=reduction)
    return smooth_l1_loss(pred, target, beta=beta, reduction=reduction)


def softmax_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class focal loss ``-(1 - p_t)^gamma log p_t`` with ``p_t`` the softmax probability of the target.

    `logits` `Tensor[N, K]`, integer `target` `Tensor[N]`; `gamma=0` is the cross-entropy.
    """
    check_reduction(reduction)
    ce = cross_entropy(logits, target, reduction="none")
    p_t = (-ce).exp()
    return reduce_loss((1.0 - p_t).pow(gamma) * ce, reduction, weight)


def classification_loss(name: str, logits: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    """Box-classifier loss `name` ("ce" | "focal") of `Tensor[R, K+1]` logits and integer labels `Tensor[R]`."""
    if check_loss_name(name, CLS_LOSSES, "classification loss") == "focal":
        return softmax_focal_loss(logits, target, reduction=reduction)
    return F.cross_entropy(logits, target, reduction=reduction)


def objectness_loss(name: str, logits: Tensor, target: Tensor, *, reduction: str = "sum") -> Tensor:
    """Binary objectness loss `name` ("ce" | "focal") of `Tensor[A]` logits and 0 / 1 targets `Tensor[A]`."""
    if check_loss_name(name, CLS_LOSSES, "classification loss") == "focal":
        return sigmoid_focal_loss(logits, target, alpha=-1.0, reduction=reduction)
    return binary_cross_entropy_with_logits(logits, target, reduction=reduction)
