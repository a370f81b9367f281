"""Shared reduction and argument checks for the loss functions.

Every loss in :mod:`detkit.losses` computes an unreduced, elementwise loss first, then
hands it to :func:`reduce_loss`. ``"mean"`` over zero elements returns 0 (with a graph
that gives zero gradients) instead of NaN: detection batches can hold no positives, and
one such batch must not poison training.
"""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of ``"none"``, ``"mean"``, ``"sum"``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_same_shape(pred: Tensor, target: Tensor, pred_name: str = "pred", target_name: str = "target") -> None:
    """Raise ``ValueError`` naming both shapes unless ``pred`` and ``target`` have the same shape."""
    if pred.shape != target.shape:
        raise ValueError(
            f"{pred_name} and {target_name} must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def reduce_loss(
    loss: Tensor,
    reduction: str = "mean",
    weight: Tensor | None = None,
    *,
    denominator: Tensor | float | None = None,
) -> Tensor:
    """Weight and reduce an elementwise loss.

    Args:
        loss: unreduced loss, any shape.
        reduction: ``"none"`` (return the weighted loss, same shape as ``loss``),
            ``"sum"`` or ``"mean"``.
        weight: optional elementwise weight, broadcast to ``loss`` (it may not enlarge
            ``loss``'s shape); multiplied in before the reduction.
        denominator: what ``"mean"`` divides the sum by; defaults to ``loss.numel()``.
            Callers pass e.g. the number of non-ignored elements. A non-positive denominator is
            treated as 1, so a mean over nothing is 0 (not NaN).

    Returns:
        ``Tensor`` of ``loss``'s shape for ``"none"``, a scalar otherwise.
    """
    check_reduction(reduction)
    if weight is not None:
        if torch.broadcast_shapes(loss.shape, weight.shape) != loss.shape:
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} does not broadcast to the loss of shape {tuple(loss.shape)}"
            )
        loss = loss * weight
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if denominator is None:
        return total / max(loss.numel(), 1)
    if isinstance(denominator, Tensor):
        denominator = denominator.to(total.dtype)
        return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return total / (denominator if denominator > 0 else 1.0)
