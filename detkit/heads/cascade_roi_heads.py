"""Cascade R-CNN's RoI heads (Cai & Vasconcelos, CVPR 2018): T box stages in sequence, stage t trained
on the refined boxes of stage t-1 at a higher IoU threshold.

Shape shorthand:
    N images   T stages   R RoIs, packed over the batch with `batch_idx` Tensor[R]
    K classes without background (logits have K+1 columns, column 0 = background)
    D detections, packed over the batch
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from detkit.heads.poolers import RoIPooler
from detkit.heads.roi_heads import RoIHeads, SampledRoIs
from detkit.matching import BoxCoder, Matcher
from detkit.structures import clip_boxes

__all__ = ["CascadeRoIHeads"]

#: the paper's (and detectron2's / mmdetection's) three stages
CASCADE_IOU_THRESHOLDS = (0.5, 0.6, 0.7)
CASCADE_STAGE_WEIGHTS = (1.0, 0.5, 0.25)
# the regression targets' spread shrinks as the boxes improve: each stage normalises them tighter
CASCADE_BBOX_REG_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))

Pool = Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]


class CascadeRoIHeads(RoIHeads):
    """Box stages of Cascade R-CNN (and the mask branch of Cascade Mask R-CNN) with `RoIHeads`' calling convention.

    Training, for each stage t: the input boxes (stage 0: the proposals; stage t > 0: stage t-1's
    sampled RoIs moved by its regression, detached and clipped to the image) get the gt boxes
    appended and are matched at IoU `iou_thresholds[t]` (foreground at or above, background below)
    and sampled as `RoIHeads.sample_proposals` does; the stage's classification and class-agnostic
    box losses (targets encoded with `bbox_reg_weights[t]`) are multiplied by `stage_weights[t]`
    and named `loss_classifier_stage{t+1}` / `loss_box_reg_stage{t+1}`. The mask head (if any)
    trains on the last stage's sample.

    `RoIHeads.forward` runs the stages through `box_branch_losses` / `box_branch_scores`.

    Inference (detectron2's definition): the proposals go through every stage, each stage's input
    being the previous stage's refined boxes; the class probabilities of the T stages (each on
    its own input boxes, one row per proposal) are averaged and the last stage's regression of
    its input boxes gives the detections' boxes. Masks are predicted on those boxes.

    `box_head` and `box_predictor` are `nn.ModuleList`s of the T stages' (state dict keys
    `box_head.{t}.*`, `box_predictor.{t}.*`); `box_coder` is the last stage's.

    Args:
        box_pooler: pools `Tensor[R, C, S, S]` features of each RoI, shared by the stages.
        box_heads: T modules, pooled features -> `Tensor[R, F]` (e.g. `TwoFCHead`).
        box_predictors: T modules, features -> (class logits `Tensor[R, K+1]`, class-agnostic
            deltas `Tensor[R, 4]`) (`BoxPredictor(..., class_agnostic_box=True)`).
        iou_thresholds: IoU of each stage's foreground / background split.
        stage_weights: each stage's loss weight.
        bbox_reg_weights: each stage's (wx, wy, ww, wh) box coder weights.
        kwargs: `RoIHeads`' sampling, loss, post-processing and mask keywords (`batch_size_per_image`,
            `box_loss`, `score_threshold`, `mask_head`, ...); its matching and box coder ones are per stage here.
    """

    def __init__(
        self,
        box_pooler: RoIPooler,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[nn.Module],
        *,
        num_classes: int,
        iou_thresholds: Sequence[float] = CASCADE_IOU_THRESHOLDS,
        stage_weights: Sequence[float] = CASCADE_STAGE_WEIGHTS,
        bbox_reg_weights: Sequence[Sequence[float]] = CASCADE_BBOX_REG_WEIGHTS,
        **kwargs,
    ):
        stages = len(box_heads)
        if stages < 1:
            raise ValueError("CascadeRoIHeads needs at least one stage (box_heads is empty)")
        lengths = {
            "box_predictors": len(box_predictors),
            "iou_thresholds": len(iou_thresholds),
            "stage_weights": len(stage_weights),
            "bbox_reg_weights": len(bbox_reg_weights),
        }
        for name, length in lengths.items():
            if length != stages:
                raise ValueError(f"{name} has {length} entries, one per cascade stage ({stages}) expected")
        for t, predictor in enumerate(box_predictors):
            bbox_pred = getattr(predictor, "bbox_pred", None)
            if isinstance(bbox_pred, nn.Linear) and bbox_pred.out_features != 4:
                raise ValueError(
                    f"box_predictors[{t}] regresses {bbox_pred.out_features // 4} boxes per RoI; a cascade stage "
                    "refines one: BoxPredictor(..., class_agnostic_box=True)"
                )
        per_stage = {"fg_iou_threshold", "bg_iou_threshold", "bbox_reg_weights", "matcher"}.intersection(kwargs)
        if per_stage:
            raise TypeError(
                f"CascadeRoIHeads takes no {sorted(per_stage)[0]!r}: matching and box coding are per stage "
                "(iou_thresholds, bbox_reg_weights)"
            )
        super().__init__(
            box_pooler,
            nn.ModuleList(box_heads),
            nn.ModuleList(box_predictors),
            num_classes=num_classes,
            fg_iou_threshold=iou_thresholds[0],
            bg_iou_threshold=iou_thresholds[0],
            bbox_reg_weights=tuple(bbox_reg_weights[-1]),
            **kwargs,
        )
        self.iou_thresholds = tuple(float(u) for u in iou_thresholds)
        self.stage_weights = tuple(float(w) for w in stage_weights)
        self.stage_matchers = [Matcher(u, u, allow_low_quality_matches=False) for u in self.iou_thresholds]
        self.stage_box_coders = [BoxCoder(weights=w) for w in bbox_reg_weights]
        self.matcher, self.box_coder = self.stage_matchers[0], self.stage_box_coders[-1]

    @property
    def num_stages(self) -> int:
        return len(self.stage_box_coders)

    def run_stage(self, stage: int, boxes: Tensor, batch_idx: Tensor, features: dict[str, Tensor], pool: Pool):
        """Stage `stage` on RoIs `boxes` `Tensor[R, 4]`: (class logits `Tensor[R, K+1]`, deltas `Tensor[R, 4]`)."""
        return self.box_predictor[stage](self.box_head[stage](pool(features, boxes, batch_idx)))

    def refine_boxes(
        self, stage: int, box_deltas: Tensor, boxes: Tensor, batch_idx: Tensor, image_sizes: Tensor
    ) -> Tensor:
        """Stage `stage`'s regression `Tensor[R, 4]` applied to its input `boxes` `Tensor[R, 4]`, detached
        and clipped to each RoI's image (`image_sizes` `Tensor[N, 2]`): the next stage's input, float32."""
        refined = self.stage_box_coders[stage].decode(box_deltas.detach().float(), boxes.float())
        return clip_boxes(refined, image_sizes[batch_idx])

    def box_branch_losses(
        self, features: dict[str, Tensor], proposals: Tensor, batch_idx: Tensor, targets, image_sizes: Tensor
    ) -> tuple[dict[str, Tensor], SampledRoIs]:
        """Training: every stage's weighted losses and the last stage's sampled RoIs (the mask branch's)."""
        losses: dict[str, Tensor] = {}
        boxes = proposals
        for t in range(self.num_stages):
            matcher, box_coder = self.stage_matchers[t], self.stage_box_coders[t]
            sampled = self.sample_proposals(boxes, batch_idx, targets, matcher=matcher, box_coder=box_coder)
            class_logits, box_deltas = self.run_stage(t, sampled.boxes, sampled.batch_idx, features, self.box_pooler)
            stage_losses = self.box_loss(class_logits, box_deltas, sampled, box_coder=box_coder)
            losses |= {f"{name}_stage{t + 1}": loss * self.stage_weights[t] for name, loss in stage_losses.items()}
            if t + 1 < self.num_stages:
                boxes = self.refine_boxes(t, box_deltas, sampled.boxes, sampled.batch_idx, image_sizes)
                batch_idx = sampled.batch_idx
        return losses, sampled

    def box_branch_scores(self, features, proposals: Tensor, batch_idx: Tensor, image_sizes: Tensor, pool=None):
        """Inference through the T stages on `features` (dict of `Tensor[N, C, H, W]`) and `proposals`
        `Tensor[R, 4]`: (class probabilities averaged over the stages `Tensor[R, K]`
        (background column dropped), the last stage's deltas `Tensor[R, 4]`, the last stage's input
        boxes `Tensor[R, 4]`). `pool(features, boxes, batch_idx)` replaces `box_pooler` (export)."""
        pool = self.box_pooler if pool is None else pool
        boxes, probs = proposals, None
        for t in range(self.num_stages):
            class_logits, box_deltas = self.run_stage(t, boxes, batch_idx, features, pool)
            stage_probs = F.softmax(class_logits.float(), -1)
            probs = stage_probs if probs is None else probs + stage_probs
            if t + 1 < self.num_stages:
                boxes = self.refine_boxes(t, box_deltas, boxes, batch_idx, image_sizes)
        return (probs / self.num_stages)[:, 1:], box_deltas, boxes
