"""CascadeRoIHeads on hand-checked cases: each stage samples from the previous stage's refined boxes at its
own IoU threshold, inference averages the stages' class probabilities and takes the last stage's boxes."""

import math

import pytest
import torch

from detkit.heads import BoxPredictor, CascadeRoIHeads, RoIPooler, TwoFCHead
from detkit.models import build_model
from detkit.structures import ImageBatch, PackedTargets

GT = [20.0, 20.0, 60.0, 60.0]  # 40 x 40


def _heads(num_classes: int = 2) -> CascadeRoIHeads:
    heads = build_model("cascade_rcnn_tiny", num_classes=num_classes).roi_heads
    assert isinstance(heads, CascadeRoIHeads) and heads.num_stages == 3
    return heads


def _set_stage(heads: CascadeRoIHeads, stage: int, *, logits=None, deltas=(0.0, 0.0, 0.0, 0.0)) -> None:
    """Stage `stage` predicts the same class logits and box deltas for every RoI."""
    predictor = heads.box_predictor[stage]
    with torch.no_grad():
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.copy_(torch.tensor(deltas))
        if logits is not None:
            predictor.cls_score.weight.zero_()
            predictor.cls_score.bias.copy_(torch.tensor(logits))


def _features() -> dict[str, torch.Tensor]:
    return {"c3": torch.rand(1, 128, 16, 16, generator=torch.Generator().manual_seed(0))}


def test_stage_two_labels_the_refined_boxes_at_iou_0_6():
    heads = _heads()
    # stage 1 moves every RoI left by 0.15 of its width: dx = -1.5 with the (10, 10, 5, 5) coder
    _set_stage(heads, 0, deltas=(-1.5, 0.0, 0.0, 0.0))
    samples = []
    sample = heads.sample_proposals

    def record(*args, **kwargs):
        samples.append(sample(*args, **kwargs))
        return samples[-1]

    heads.sample_proposals = record
    # 40 x 40 boxes on the gt's rows: IoU with the gt = overlap / (80 - overlap) for an x overlap of `overlap`
    proposals = torch.tensor(
        [
            [26.0, 20.0, 66.0, 60.0],  # IoU 34/46 = 0.74: fg; refined to the gt itself (IoU 1): fg
            [37.0, 20.0, 77.0, 60.0],  # IoU 23/57 = 0.40: bg; refined [31, 71]: 29/51 = 0.57 < 0.6: bg
            [34.0, 20.0, 74.0, 60.0],  # IoU 26/54 = 0.48: bg; refined [28, 68]: 32/48 = 0.67: fg
            [90.0, 80.0, 126.0, 120.0],  # far: bg; refined by 0.15 * 36 = 5.4 px: bg
        ]
    )
    targets = PackedTargets(
        boxes=torch.tensor([GT]), labels=torch.tensor([2]), batch_idx=torch.tensor([0]), num_images=1
    )
    heads.train()
    losses, last = heads.box_branch_losses(
        _features(), proposals, torch.zeros(4, dtype=torch.int64), targets, torch.tensor([[128, 128]])
    )
    assert len(samples) == 3 and last is samples[2]
    first, second = samples[0], samples[1]
    # stage 1: the proposals and the gt (appended), at IoU 0.5
    assert torch.equal(first.boxes, torch.cat([proposals, torch.tensor([GT])]))
    assert first.labels.tolist() == [2, 0, 0, 0, 2]
    # stage 2: stage 1's sampled RoIs moved left by 6 px (5.4 for the 36 px wide one), then the gt again
    refined = torch.tensor(
        [
            [20.0, 20.0, 60.0, 60.0],
            [31.0, 20.0, 71.0, 60.0],
            [28.0, 20.0, 68.0, 60.0],
            [84.6, 80.0, 120.6, 120.0],
            [14.0, 20.0, 54.0, 60.0],  # the gt added at stage 1, refined: IoU 34/46 = 0.74
            GT,
        ]
    )
    torch.testing.assert_close(second.boxes, refined)
    assert second.labels.tolist() == [2, 0, 2, 0, 2, 2]
    # stage 2's targets use its (20, 20, 10, 10) coder: [28, 68] -> [20, 60] is dx = -8 / 40 * 20 = -4
    torch.testing.assert_close(second.regression_targets[2], torch.tensor([-4.0, 0.0, 0.0, 0.0]))
    assert not second.boxes.requires_grad  # refined boxes are detached between stages
    assert set(losses) == {f"loss_{k}_stage{t}" for k in ("classifier", "box_reg") for t in (1, 2, 3)}


def test_stage_losses_are_weighted_1_0_5_0_25():
    heads = _heads()
    heads.stage_weights = (1.0, 1.0, 1.0)
    proposals, batch_idx = torch.tensor([[26.0, 20.0, 66.0, 60.0]]), torch.zeros(1, dtype=torch.int64)
    targets = PackedTargets(
        boxes=torch.tensor([GT]), labels=torch.tensor([1]), batch_idx=torch.tensor([0]), num_images=1
    )
    sizes = torch.tensor([[128, 128]])
    torch.manual_seed(0)
    plain, _ = heads.box_branch_losses(_features(), proposals, batch_idx, targets, sizes)
    heads.stage_weights = (1.0, 0.5, 0.25)
    torch.manual_seed(0)
    weighted, _ = heads.box_branch_losses(_features(), proposals, batch_idx, targets, sizes)
    for name, value in weighted.items():
        w = {"1": 1.0, "2": 0.5, "3": 0.25}[name[-1]]
        torch.testing.assert_close(value, plain[name] * w)


def test_inference_averages_the_stage_probabilities_and_takes_the_last_stage_boxes():
    heads = _heads(num_classes=2).eval()
    # stage logits (background, class 1, class 2) -> probabilities:
    # (0, ln 2, 0): (1/4, 1/2, 1/4); (0, 0, 0): 1/3 each; (ln 3, 0, 0): (3/5, 1/5, 1/5)
    # each stage moves the 40 px wide RoIs right by 4 px: dx = 0.1 times its coder's wx (10, 20, 30)
    _set_stage(heads, 0, logits=(0.0, math.log(2), 0.0), deltas=(1.0, 0.0, 0.0, 0.0))
    _set_stage(heads, 1, logits=(0.0, 0.0, 0.0), deltas=(2.0, 0.0, 0.0, 0.0))
    _set_stage(heads, 2, logits=(math.log(3), 0.0, 0.0), deltas=(3.0, 0.0, 0.0, 0.0))
    pooled = []

    def pool(features, boxes, batch_idx):  # each stage's input boxes
        pooled.append(boxes.clone())
        return heads.box_pooler(features, boxes, batch_idx)

    proposals = torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 30.0, 100.0, 70.0]])
    batch_idx, sizes = torch.zeros(2, dtype=torch.int64), torch.tensor([[128, 128]])
    with torch.no_grad():
        scores, deltas, boxes = heads.box_branch_scores(_features(), proposals, batch_idx, sizes, pool)
    shift = torch.tensor([4.0, 0.0, 4.0, 0.0])
    assert len(pooled) == 3
    for t in range(3):
        torch.testing.assert_close(pooled[t], proposals + t * shift)
    expected = torch.tensor([(1 / 2 + 1 / 3 + 1 / 5) / 3, (1 / 4 + 1 / 3 + 1 / 5) / 3])
    torch.testing.assert_close(scores, expected.expand(2, 2))
    torch.testing.assert_close(deltas, torch.tensor([[3.0, 0.0, 0.0, 0.0]] * 2))
    torch.testing.assert_close(boxes, proposals + 2 * shift)  # the last stage's input
    # the detections: the last stage's regression of its input, scored by the average
    batch = ImageBatch(tensor=torch.zeros(1, 3, 128, 128), image_sizes=sizes, original_sizes=sizes)
    with torch.no_grad():
        dets, losses = heads(_features(), proposals, batch_idx, batch)
    assert losses == {}
    order = torch.argsort(dets.scores, descending=True, stable=True)
    torch.testing.assert_close(dets.scores[order], expected.repeat_interleave(2))
    assert dets.labels[order].tolist() == [1, 1, 2, 2]
    torch.testing.assert_close(dets.boxes[order][:2].sort(0).values, (proposals + 3 * shift).sort(0).values)


def test_intermediate_boxes_are_clipped_to_the_image():
    heads = _heads().eval()
    _set_stage(heads, 0, deltas=(5.0, 0.0, 0.0, 0.0))  # + half the width: past the right border
    _set_stage(heads, 1)  # no move
    proposals = torch.tensor([[100.0, 10.0, 120.0, 30.0]])
    sizes = torch.tensor([[128, 112]])  # (h, w)
    with torch.no_grad():
        _, _, boxes = heads.box_branch_scores(_features(), proposals, torch.zeros(1, dtype=torch.int64), sizes)
    torch.testing.assert_close(boxes[0], torch.tensor([110.0, 10.0, 112.0, 30.0]))  # [110, 130] clipped at w = 112


def test_bad_configurations_name_the_keyword():
    pooler = RoIPooler(["c3"], [8], output_size=7)
    heads = [TwoFCHead(8, 7, 16) for _ in range(3)]
    agnostic = [BoxPredictor(16, 2, class_agnostic_box=True) for _ in range(3)]
    with pytest.raises(ValueError, match="iou_thresholds has 2 entries, one per cascade stage"):
        CascadeRoIHeads(pooler, heads, agnostic, num_classes=2, iou_thresholds=(0.5, 0.6))
    with pytest.raises(ValueError, match=r"box_predictors\[1\] regresses 3 boxes per RoI"):
        CascadeRoIHeads(pooler, heads, [agnostic[0], BoxPredictor(16, 2), agnostic[2]], num_classes=2)
    with pytest.raises(TypeError, match="takes no 'fg_iou_threshold'"):
        CascadeRoIHeads(pooler, heads, agnostic, num_classes=2, fg_iou_threshold=0.6)
    with pytest.raises(ValueError, match="roi_matcher does not apply to a cascade"):
        build_model("cascade_rcnn_tiny", num_classes=2, roi_matcher=lambda iou, valid: None)
