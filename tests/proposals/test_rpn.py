"""RPN.filter_proposals on hand-checked cases, and the RPN's public names."""

import pytest
import torch

from detkit.matching import AnchorGenerator
from detkit.proposals import RPN, RPNHead


@pytest.fixture(params=[True, False], ids=["cpu_batched_nms", "per_image_nms"])
def cpu_kernels(request):
    """Both NMS strategies of the RPN (see `nms_per_image_and_level`) must give these answers."""
    return request.param


def _rpn(**kwargs):
    anchors = AnchorGenerator(((32,), (64,)), [(1.0,)] * 2, (8, 16))
    args = dict(pre_nms_top_n_test=3, post_nms_top_n_test=2, nms_threshold=0.5, min_box_size=1.0)
    return RPN(RPNHead(4, 1), anchors, in_features=["p3", "p4"], **{**args, **kwargs}).eval()


# one level of 4 anchors; image 0 is 20 x 30 (h x w), image 1 is 50 x 50
PROPOSALS = torch.tensor(
    [
        [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 5.0, 40.0, 15.0], [0.0, 0.0, 5.0, 5.0]],
        [[0.0, 0.0, 0.5, 10.0], [10.0, 10.0, 20.0, 20.0], [30.0, 30.0, 40.0, 40.0], [12.0, 12.0, 22.0, 22.0]],
    ]
)
LOGITS = torch.tensor([[3.0, 2.0, 1.0, -5.0], [4.0, 1.0, 0.5, 0.0]])
SIZES = torch.tensor([[20, 30], [50, 50]])


def test_filter_proposals_top_k_clip_small_nms_and_post_nms_top_k(cpu_kernels):
    # image 0: anchor 3 is not in the top 3, anchor 1 overlaps anchor 0 (IoU 0.82), anchor 2 is clipped
    # image 1: anchor 3 is not in the top 3, anchor 0 is 0.5 px wide
    boxes, batch_idx = _rpn(cpu_kernels=cpu_kernels).filter_proposals(PROPOSALS, LOGITS, [4], SIZES)
    assert batch_idx.tolist() == [0, 0, 1, 1]
    assert boxes.tolist() == [[0, 0, 10, 10], [20, 5, 30, 15], [10, 10, 20, 20], [30, 30, 40, 40]]
    rpn = _rpn(post_nms_top_n_test=1, cpu_kernels=cpu_kernels)
    boxes, batch_idx = rpn.filter_proposals(PROPOSALS, LOGITS, [4], SIZES)
    assert batch_idx.tolist() == [0, 1] and boxes.tolist() == [[0, 0, 10, 10], [10, 10, 20, 20]]


def test_filter_proposals_score_threshold_and_levels(cpu_kernels):
    # sigmoid(1) = 0.73 < 0.75 < sigmoid(2): image 1 keeps nothing
    rpn = _rpn(score_threshold=0.75, cpu_kernels=cpu_kernels)
    boxes, batch_idx = rpn.filter_proposals(PROPOSALS, LOGITS, [4], SIZES)
    assert batch_idx.tolist() == [0] and boxes.tolist() == [[0, 0, 10, 10]]
    # as two levels of 2 anchors: top 3 per level keeps all but the small / clipped ones, and NMS runs
    # per (image, level), so anchors 0 and 1 of image 0 (same level) still suppress each other
    rpn = _rpn(post_nms_top_n_test=10, cpu_kernels=cpu_kernels)
    boxes, batch_idx = rpn.filter_proposals(PROPOSALS, LOGITS, [2, 2], SIZES)
    assert batch_idx.tolist() == [0, 0, 0, 1, 1, 1]
    assert boxes[:3].tolist() == [[0, 0, 10, 10], [20, 5, 30, 15], [0, 0, 5, 5]]
    assert boxes[3:].tolist() == [[10, 10, 20, 20], [30, 30, 40, 40], [12, 12, 22, 22]]


def test_filter_proposals_uses_the_training_counts_in_training_mode(cpu_kernels):
    rpn = _rpn(pre_nms_top_n_train=1, post_nms_top_n_train=5, cpu_kernels=cpu_kernels).train()
    boxes, batch_idx = rpn.filter_proposals(PROPOSALS, LOGITS, [4], SIZES)
    assert batch_idx.tolist() == [0] and boxes.tolist() == [[0, 0, 10, 10]]  # image 1's best is too small


@pytest.mark.parametrize("keyword", [{"min_size": 2.0}, {"strides": (8, 16)}])
def test_removed_keywords_are_refused(keyword):
    # min_size is min_box_size; the anchor generator holds the strides
    with pytest.raises(TypeError, match=next(iter(keyword))):
        _rpn(**keyword)
    rpn = _rpn()
    assert not hasattr(rpn, "min_size") and not hasattr(rpn, "strides")
