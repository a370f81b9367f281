"""Classification losses: softmax / sigmoid cross-entropy, focal, hinge, logistic, exponential.

Shape shorthand: N samples (RoIs, anchors, ...), K classes (columns of the logits; for
a box classifier this includes the background column), ``*`` optional extra dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.ops
from torch import Tensor

from .reduction import check_reduction, check_same_shape, reduce_loss

HINGE_MODES = ("one_vs_rest", "crammer_singer", "weston_watkins")


def _check_class_target(logits: Tensor, target: Tensor) -> Tensor:
    """Check ``logits: [N, K, *]`` against integer ``target: [N, *]``; return ``target`` as int64."""
    expected = logits.shape[:1] + logits.shape[2:]
    if logits.ndim < 2 or target.shape != expected:
        raise ValueError(
            f"expected logits [N, K, *] and target [N, *], got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    return target.long()


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    class_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Softmax cross-entropy over class indices.

    Args:
        logits: ``Tensor[N, K, *]`` unnormalised class scores.
        target: ``Tensor[N, *]`` integer class indices in ``[0, K)`` or ``ignore_index``.
        ignore_index: target value whose elements contribute 0 and are not counted.
            Pass ``-1`` to follow detkit's "label -1 = ignore" convention.
        label_smoothing: in ``[0, 1]``; mixes the one-hot target with the uniform one.
        weight: optional per-element weight broadcast to ``Tensor[N, *]``.
        class_weight: optional ``Tensor[K]`` rescaling each target class.
        reduction: ``"none"`` (returns ``Tensor[N, *]``, 0 where ignored) | ``"sum"`` |
            ``"mean"``. ``"mean"`` divides by the number of non-ignored elements, or,
            with ``class_weight``, by the sum of their class weights (as
            ``torch.nn.functional.cross_entropy`` does); with no such element it is 0.
    """
    check_reduction(reduction)
    target = _check_class_target(logits, target)
    loss = F.cross_entropy(
        logits,
        target,
        weight=class_weight,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    valid = target != ignore_index
    if class_weight is None:
        denominator = valid.sum()
    else:
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        denominator = (class_weight[safe_target] * valid).sum()
    return reduce_loss(loss, reduction, weight, denominator=denominator)


def binary_cross_entropy_with_logits(
    logits: Tensor,
    target: Tensor,
    *,
    pos_weight: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Sigmoid cross-entropy ``-[p t log s(x) + (1 - t) log(1 - s(x))]``, numerically stable.

    Args:
        logits: ``Tensor[*]``.
        target: ``Tensor[*]`` in ``[0, 1]`` (cast to the logits' dtype).
        pos_weight: optional weight ``p`` of the positive term, broadcast along the last
            dim (e.g. ``Tensor[K]``).
        weight: optional elementwise weight broadcast to ``Tensor[*]``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; ``"mean"`` of nothing is 0.
    """
    check_reduction(reduction)
    check_same_shape(logits, target, "logits", "target")
    loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=pos_weight, reduction="none")
    return reduce_loss(loss, reduction, weight)


def sigmoid_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Focal loss of Lin et al. (2017): ``-a_t (1 - p_t)^gamma log p_t`` on sigmoid outputs.

    ``alpha`` weighs positives (``1 - alpha`` negatives); ``alpha < 0`` disables it.
    ``"mean"`` averages over all elements; detectors usually normalise by the number
    of positives instead: ``sigmoid_focal_loss(..., reduction="sum") / max(num_pos, 1)``.

    Args:
        logits: ``Tensor[*]``.
        target: ``Tensor[*]`` binary (or soft) targets, cast to the logits' dtype.
        weight: optional elementwise weight broadcast to ``Tensor[*]``.
    """
    check_reduction(reduction)
    check_same_shape(logits, target, "logits", "target")
    loss = torchvision.ops.sigmoid_focal_loss(
        logits, target.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="none"
    )
    return reduce_loss(loss, reduction, weight)


def multiclass_hinge_loss(
    scores: Tensor,
    target: Tensor,
    *,
    margin: float = 1.0,
    mode: str = "one_vs_rest",
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class hinge loss for linear SVM classifiers.

    Modes, with ``s`` the scores of one sample and ``y`` its class:

    - ``"one_vs_rest"`` (default; R-CNN's per-class linear SVMs): one binary SVM per
      class ``c`` with label ``t_c = +1`` if ``y == c`` else ``-1``;
      loss ``max(0, margin - t_c s_c)`` per class, unreduced ``Tensor[N, K]``. A ``y``
      outside ``[0, K)`` (e.g. a background label when ``scores`` has only foreground
      columns) is a negative for every class. A ``weight`` of shape ``Tensor[K]`` or
      ``Tensor[N, K]`` weighs or masks classes (e.g. zero the background column, or the
      samples a class's hard-negative mining left out).
    - ``"crammer_singer"``: ``max(0, margin + max_{c != y} s_c - s_y)``, unreduced
      ``Tensor[N]``.
    - ``"weston_watkins"``: ``sum_{c != y} max(0, margin + s_c - s_y) / K``, unreduced
      ``Tensor[N]`` (``torch.nn.functional.multi_margin_loss`` with ``p=1``).

    In the last two modes ``y`` must lie in ``[0, K)``.

    Args:
        scores: ``Tensor[N, K]`` raw classifier scores.
        target: ``Tensor[N]`` integer class indices.
        weight: optional weight broadcast to the unreduced loss (see above).
        reduction: ``"none"`` | ``"mean"`` (over all unreduced elements) | ``"sum"``.
    """
    check_reduction(reduction)
    if mode not in HINGE_MODES:
        raise ValueError(f"mode must be one of {HINGE_MODES}, got {mode!r}")
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [N, K], got {tuple(scores.shape)}")
    target = _check_class_target(scores, target)
    if mode == "one_vs_rest":
        classes = torch.arange(scores.shape[1], device=scores.device)
        signs = torch.where(target[:, None] == classes, 1.0, -1.0).to(scores.dtype)  # [N, K]
        loss = F.relu(margin - signs * scores)
    elif mode == "crammer_singer":
        is_target = F.one_hot(target, scores.shape[1]).bool()  # [N, K]
        target_score = scores.gather(1, target[:, None]).squeeze(1)
        best_other = scores.masked_fill(is_target, float("-inf")).amax(dim=1)
        loss = F.relu(margin + best_other - target_score)
    else:
        loss = F.multi_margin_loss(scores, target, p=1, margin=margin, reduction="none")
    return reduce_loss(loss, reduction, weight)


def log_loss(
    scores: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Logistic loss ``log(1 + exp(-y f))`` for labels ``y`` in ``{-1, +1}``, for completeness.

    Computed as ``softplus(-y f)``, stable for large ``|f|``. Equals binary
    cross-entropy with target ``(y + 1) / 2``.

    Args:
        scores: ``Tensor[*]`` real-valued scores ``f``.
        target: ``Tensor[*]`` labels in ``{-1, +1}`` (not checked), cast to the scores' dtype.
    """
    check_reduction(reduction)
    check_same_shape(scores, target, "scores", "target")
    return reduce_loss(F.softplus(-target.to(scores.dtype) * scores), reduction, weight)


def exponential_loss(
    scores: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Exponential (AdaBoost) loss ``exp(-y f)`` for labels ``y`` in ``{-1, +1}``, for completeness.

    Unbounded for confidently wrong scores, hence rarely used for deep detectors.
    Arguments as in :func:`log_loss`.
    """
    check_reduction(reduction)
    check_same_shape(scores, target, "scores", "target")
    return reduce_loss(torch.exp(-target.to(scores.dtype) * scores), reduction, weight)
