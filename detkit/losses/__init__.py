"""Loss functions for detection: pure functions on tensors, torch / torchvision.ops underneath.

Each takes ``reduction`` (``"none"`` | ``"mean"`` | ``"sum"``, default ``"mean"``) and an
optional elementwise ``weight`` applied before the reduction. ``"mean"`` over zero
elements returns 0, not NaN, since detection batches can hold no positives.

The detector heads pick theirs by name (`box_regression_loss`, `classification_loss`,
`objectness_loss`; see `selection`).
"""

from .classification import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    exponential_loss,
    log_loss,
    multiclass_hinge_loss,
    sigmoid_focal_loss,
)
from .reduction import reduce_loss
from .regression import (
    ciou_loss,
    diou_loss,
    giou_loss,
    l1_loss,
    mse_loss,
    smooth_l1_loss,
)
from .selection import (
    BOX_LOSSES,
    CLS_LOSSES,
    box_regression_loss,
    classification_loss,
    objectness_loss,
    softmax_focal_loss,
    uses_decoded_boxes,
)

__all__ = [
    "BOX_LOSSES",
    "CLS_LOSSES",
    "box_regression_loss",
    "classification_loss",
    "objectness_loss",
    "softmax_focal_loss",
    "uses_decoded_boxes",
    "binary_cross_entropy_with_logits",
    "ciou_loss",
    "cross_entropy",
    "diou_loss",
    "exponential_loss",
    "giou_loss",
    "l1_loss",
    "log_loss",
    "mse_loss",
    "multiclass_hinge_loss",
    "reduce_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
]
