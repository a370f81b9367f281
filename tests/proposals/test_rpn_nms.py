"""The RPN's NMS per (image, level): the CPU strategy (one batched_nms call) and the per-image one
(other devices) give the proposals of a plain per-(image, level) loop, and the per-image one costs
one NMS call per image on the CUDA code path, however many proposals survive."""

import sys
from pathlib import Path

import pytest
import torch
from torchvision.ops import nms

from detkit.matching import AnchorGenerator
from detkit.proposals import RPN, RPNHead
from detkit.proposals.rpn import nms_per_image_and_level

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_dispatch import count_dispatch  # noqa: E402


def _candidates(n, level_sizes, *, ties, seed=0):
    """Integer boxes (level offsets then add exactly), 10% invalid; scores from 8 values (`ties`,
    many equal scores) or continuous."""
    g = torch.Generator().manual_seed(seed)
    k = sum(level_sizes)
    xy = torch.randint(0, 200, (n, k, 2), generator=g).float()
    wh = torch.randint(1, 60, (n, k, 2), generator=g).float()
    boxes = torch.cat([xy, xy + wh], -1)
    scores = torch.randint(0, 8, (n, k), generator=g).float() / 8 if ties else torch.rand(n, k, generator=g)
    levels = torch.cat([torch.full((s,), i) for i, s in enumerate(level_sizes)])
    valid = torch.rand(n, k, generator=g) > 0.1
    return boxes, scores, levels, valid


def _reference(boxes, scores, levels, valid, iou_threshold, top_n):
    """nms per (image, level), then each image's rows by (score descending, row), first top_n."""
    n, k = scores.shape
    rows = []
    for i in range(n):
        kept = []
        for level in levels.unique():
            cols = torch.nonzero(valid[i] & (levels == level)).squeeze(1)
            kept += cols[nms(boxes[i, cols], scores[i, cols], iou_threshold)].tolist()
        kept.sort(key=lambda c: (-float(scores[i, c]), c))
        rows += [i * k + c for c in kept[:top_n]]
    return rows


def _ties_by_row(rows, scores):
    """`rows` with each run of equal (image, score) sorted by row: the order up to equal scores."""
    flat = scores.flatten()
    k = scores.shape[1]
    return sorted(rows, key=lambda r: (r // k, -float(flat[r]), r))


CASES = [
    (3, [900, 600, 300], 500),  # 4,860 valid boxes: batched_nms loops per group on the CPU
    (3, [900, 600, 300], 5000),  # no cap
    (2, [60, 30, 10], 40),  # under 1,000 boxes: batched_nms runs one offset NMS
]


@pytest.mark.parametrize("n, level_sizes, top_n", CASES)
@pytest.mark.parametrize("batched", [True, False])
def test_both_strategies_give_the_per_group_loop_rows(n, level_sizes, top_n, batched):
    boxes, scores, levels, valid = _candidates(n, level_sizes, ties=False)
    expected = _reference(boxes, scores, levels, valid, 0.5, top_n)
    assert len(expected) > 30 * n
    rows = nms_per_image_and_level(
        boxes, scores, levels, valid, 0.5, top_n, num_levels=len(level_sizes), batched=batched
    )
    assert rows.tolist() == expected


@pytest.mark.parametrize("n, level_sizes, top_n", CASES)
def test_both_strategies_with_equal_scores(n, level_sizes, top_n):
    # the same rows and scores in the same order; among equal scores the per-image path keeps row
    # order, batched_nms its unstable sort's (kept: CPU results stay as they were)
    boxes, scores, levels, valid = _candidates(n, level_sizes, ties=True)
    expected = _reference(boxes, scores, levels, valid, 0.5, top_n)
    args = (boxes, scores, levels, valid, 0.5, top_n)
    per_image = nms_per_image_and_level(*args, num_levels=len(level_sizes), batched=False).tolist()
    batched = nms_per_image_and_level(*args, num_levels=len(level_sizes), batched=True).tolist()
    assert per_image == expected
    k, flat = scores.shape[1], scores.flatten()
    assert [(r // k, float(flat[r])) for r in batched] == [(r // k, float(flat[r])) for r in expected]
    uncapped = _reference(boxes, scores, levels, valid, 0.5, scores.shape[1])
    if expected == uncapped:
        assert _ties_by_row(batched, scores) == expected
    else:  # the top_n cut may fall inside a run of equal scores and keep other rows of that run
        assert set(batched) <= set(uncapped)


def test_invalid_candidates_suppress_nothing():
    # the best-scoring box is invalid (e.g. too small); it must not suppress its overlapping neighbour
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [50.0, 50.0, 60.0, 60.0]]])
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    valid = torch.tensor([[False, True, True]])
    for batched in (True, False):
        rows = nms_per_image_and_level(
            boxes, scores, torch.zeros(3, dtype=torch.int64), valid, 0.5, 10, num_levels=1, batched=batched
        )
        assert rows.tolist() == [1, 2]


def _rpn(cpu_kernels):
    anchors = AnchorGenerator(((32,), (64,), (128,)), [(1.0,)] * 3, (8, 16, 32))
    return RPN(RPNHead(4, 1), anchors, in_features=["p3", "p4", "p5"], cpu_kernels=cpu_kernels).train()


def _proposals(n, counts, size=800.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = sum(counts)
    xy = torch.rand(n, a, 2, generator=g) * size * 0.9
    boxes = torch.cat([xy, xy + 8 + torch.rand(n, a, 2, generator=g) * 60], -1)
    return boxes, torch.randn(n, a, generator=g), torch.tensor([[int(size), int(size)]] * n)


def test_rpn_nms_is_one_call_per_image_on_the_cuda_code_path():
    # 5 images x 3 levels x 2,000 surviving proposals = 30,000 boxes: torchvision's batched_nms
    # would run 15 NMS calls (one per group) on CUDA; the per-image path runs 5 and syncs 6 times
    n, counts = 5, [2500, 2500, 2500]
    proposals, logits, sizes = _proposals(n, counts)
    rpn = _rpn(cpu_kernels=False)
    with count_dispatch() as c:
        boxes, batch_idx = rpn.filter_proposals(proposals, logits, counts, sizes)
    assert c.ops["torchvision.nms"] == n
    assert c.num_syncs == n + 1, dict(c.syncs)
    assert batch_idx.tolist() == sorted(batch_idx.tolist()) and set(batch_idx.tolist()) == set(range(n))


@pytest.mark.parametrize("ties", [False, True])
def test_rpn_cpu_and_device_strategies_agree_on_the_whole_filter(ties):
    counts = [600, 300, 100]
    proposals, logits, sizes = _proposals(2, counts)
    proposals = proposals.round()  # integer boxes: the per-image level offsets add exactly
    if ties:
        logits = (logits * 2).round() / 2
    boxes_cpu, idx_cpu = _rpn(cpu_kernels=True).filter_proposals(proposals, logits, counts, sizes)
    boxes_dev, idx_dev = _rpn(cpu_kernels=False).filter_proposals(proposals, logits, counts, sizes)
    assert boxes_cpu.shape[0] > 1000
    assert torch.equal(idx_cpu, idx_dev)
    if not ties:
        assert torch.equal(boxes_cpu, boxes_dev)
    else:  # the same boxes, in the same order up to equal scores
        key = lambda b, i: sorted(zip(i.tolist(), b.tolist()))  # noqa: E731
        assert key(boxes_cpu, idx_cpu) == key(boxes_dev, idx_dev)
