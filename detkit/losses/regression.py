"""Regression losses: elementwise (smooth L1, L1, MSE) and IoU-based box losses.

Shape shorthand: ``*`` any leading dims (typically R RoIs or A anchors).
Boxes are XYXY, absolute pixels; IoU losses run in float32 (or float64) even under
autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.ops
from torch import Tensor

from .reduction import check_reduction, check_same_shape, reduce_loss


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    beta: float = 1.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Smooth L1 (Huber-like) loss: ``0.5 x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta``.

    ``beta=1.0`` is Fast R-CNN's choice for box deltas; torchvision's and detectron2's
    RPN use ``1/9``. ``beta=0`` is exactly the L1 loss.

    Args:
        pred: ``Tensor[*]``, e.g. predicted box deltas ``Tensor[R, 4]``.
        target: ``Tensor[*]``, same shape as ``pred``.
        beta: quadratic-to-linear switch point, ``>= 0``.
        weight: optional elementwise weight broadcast to ``Tensor[*]``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; ``"mean"`` of nothing is 0.
    """
    check_reduction(reduction)
    check_same_shape(pred, target)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    loss = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    return reduce_loss(loss, reduction, weight)


def l1_loss(
    pred: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Absolute error ``|pred - target|`` for same-shaped tensors, weighted then reduced."""
    check_reduction(reduction)
    check_same_shape(pred, target)
    return reduce_loss(F.l1_loss(pred, target, reduction="none"), reduction, weight)


def mse_loss(
    pred: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Squared error ``(pred - target)^2`` for same-shaped tensors, weighted then reduced."""
    check_reduction(reduction)
    check_same_shape(pred, target)
    return reduce_loss(F.mse_loss(pred, target, reduction="none"), reduction, weight)


def _iou_loss(
    tv_loss,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    eps: float,
    weight: Tensor | None,
    reduction: str,
) -> Tensor:
    check_reduction(reduction)
    check_same_shape(pred_boxes, gt_boxes, "pred_boxes", "gt_boxes")
    if pred_boxes.ndim == 0 or pred_boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [*, 4], got {tuple(pred_boxes.shape)}")
    dtype = torch.promote_types(pred_boxes.dtype, torch.float32)
    with torch.autocast(device_type=pred_boxes.device.type, enabled=False):
        loss = tv_loss(pred_boxes.to(dtype), gt_boxes.to(dtype), reduction="none", eps=eps)
    return reduce_loss(loss, reduction, weight)


def giou_loss(
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    *,
    eps: float = 1e-7,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Generalized IoU loss ``1 - GIoU`` (Rezatofighi et al. 2019), in ``[0, 2]``.

    Args:
        pred_boxes: ``Tensor[*, 4]`` XYXY boxes with ``x1 <= x2``, ``y1 <= y2``.
        gt_boxes: ``Tensor[*, 4]``, paired elementwise with ``pred_boxes``.
        eps: added to denominators against division by zero.
        weight: optional weight broadcast to the per-box loss ``Tensor[*]``.
        reduction: ``"none"`` (returns ``Tensor[*]``) | ``"mean"`` | ``"sum"``.
    """
    return _iou_loss(
        torchvision.ops.generalized_box_iou_loss,
        pred_boxes,
        gt_boxes,
        eps,
        weight,
        reduction,
    )


def diou_loss(
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    *,
    eps: float = 1e-7,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Distance IoU loss ``1 - IoU + d^2 / c^2`` (Zheng et al. 2020).

    ``d`` is the distance between box centres, ``c`` the diagonal of the smallest
    enclosing box. Arguments as in :func:`giou_loss`.
    """
    return _iou_loss(
        torchvision.ops.distance_box_iou_loss,
        pred_boxes,
        gt_boxes,
        eps,
        weight,
        reduction,
    )


def ciou_loss(
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    *,
    eps: float = 1e-7,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Complete IoU loss: DIoU loss plus an aspect-ratio term ``alpha * v`` (Zheng et al. 2020).

    Boxes need positive heights (the aspect term divides by them). Arguments as in
    :func:`giou_loss`.
    """
    return _iou_loss(
        torchvision.ops.complete_box_iou_loss,
        pred_boxes,
        gt_boxes,
        eps,
        weight,
        reduction,
    )
