"""The inference path of a detkit detector as one traceable graph (for ONNX and torch.export).

Shape shorthand:
    N images (one size per call)   H x W input size   Hr x Wr resized size   Hp x Wp padded size
    A anchors   R proposals / RoIs (packed, with batch_idx)   K classes   D detections (packed)
    Kp keypoints per object   M heatmap resolution

`ExportableDetector` wraps a built `TwoStageDetector` (Faster, Fast or Mask R-CNN) and reuses
its modules (transform constants, backbone, RPN head and anchor generator, poolers, heads); it
re-states the inference glue with operations that export with symbolic sizes:

- anchors from the feature sizes of the call (no cache), per-level top-k bounded with `sym_min`;
- NMS over groups with one `torchvision.ops.nms` call, groups shifted apart by a bound taken
  from the image size (no data-dependent branch, no reduction over a possibly empty tensor);
- top-k per image by a running count instead of a sort + searchsorted;
- multi-level RoI pooling per level and one gather back to RoI order (no `if numel` branch);
- keypoint heatmaps resized for all detections at once (`heatmaps_to_keypoints_batched`) instead of
  one bicubic resize per detection.

The result equals `model.predict` on the same images (same arithmetic; NMS IoUs can differ in
the last float bits because of the group shift).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_align, roi_pool

from detkit.heads.poolers import RoIPooler, assign_fpn_levels
from detkit.heads.postprocess import decode_class_boxes

__all__ = ["ExportableDetector", "check_exportable"]


def check_exportable(model: nn.Module) -> None:
    """Raise ValueError (saying why) for detectors that have no export path."""
    from detkit.models.two_stage import TwoStageDetector

    if isinstance(model, TwoStageDetector):
        return
    name = type(model).__name__
    if name == "RCNN":
        raise ValueError(
            "R-CNN cannot be exported: it warps every proposal to a fixed-size crop and runs the whole "
            "CNN once per crop in Python chunks, with an optional per-class SVM; export the Fast R-CNN "
            "of the same backbone instead (one backbone pass, RoIPool on the same proposals)"
        )
    raise ValueError(f"cannot export {name}: only detkit two-stage detectors (Faster / Fast / Mask R-CNN) export")


# Two boxes appended to every NMS call: left of and above the image (no overlap with any clipped,
# shifted box or with each other), scored below every probability, so NMS keeps both, last.
NMS_SENTINEL_BOXES = ((-4.0, -4.0, -3.0, -3.0), (-2.0, -2.0, -1.0, -1.0))
NMS_SENTINEL_SCORE = -1.0


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, bound) -> Tensor:
    """NMS inside each group in one call: boxes are shifted by group * (bound + 1).

    `bound` is an upper bound of every coordinate (boxes are clipped to the image), so the
    shift needs no reduction over `boxes`; `scores` are probabilities (>= 0). Returns kept
    indices sorted by decreasing score.

    torchvision's fake `nms` (what export traces) declares at least 2 kept boxes; export then
    asserts that at run time, and calls with 0 or 1 box left (a blank image) would fail. Two
    sentinel boxes that NMS always keeps, after every real box, make that true; they are
    sliced off the result.
    """
    offsets = groups.to(boxes.dtype) * (bound + 1)
    sentinels = torch.tensor(NMS_SENTINEL_BOXES, dtype=boxes.dtype, device=boxes.device)
    sentinel_scores = torch.full(
        (len(NMS_SENTINEL_BOXES),), NMS_SENTINEL_SCORE, dtype=scores.dtype, device=scores.device
    )
    kept = nms(torch.cat([boxes + offsets[:, None], sentinels]), torch.cat([scores, sentinel_scores]), iou_threshold)
    # bounds the export's symbolic size (unbounded otherwise)
    torch._check(kept.shape[0] <= boxes.shape[0] + len(NMS_SENTINEL_BOXES))
    return kept[: kept.shape[0] - len(NMS_SENTINEL_BOXES)]


def first_k_per_image(batch_idx: Tensor, num_images, k: int) -> tuple[Tensor, Tensor]:
    """Of rows sorted by decreasing score (image of each: `batch_idx` Tensor[M]), keep the first `k`
    of each image, grouped by image.

    Returns (row indices Tensor[M'], their batch_idx Tensor[M']); inside an image the score order stays.
    """
    images = torch.arange(num_images, device=batch_idx.device)
    onehot = (batch_idx[:, None] == images[None, :]).to(torch.int64)  # [M, N]
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # position among the rows of the same image
    rows = torch.nonzero(rank < k).squeeze(1)
    kept_batch_idx = batch_idx[rows]
    # group by image, keep the score order inside: sort on a unique key
    key = kept_batch_idx * (batch_idx.shape[0] + 1) + rows
    order = torch.argsort(key)
    return rows[order], kept_batch_idx[order]


def clip_boxes_symbolic(boxes: Tensor, height, width) -> Tensor:
    """`structures.clip_boxes` for export: XYXY Tensor[..., 4] to [0, width] x [0, height], sizes may be symbolic."""
    x = boxes[..., 0::2].clamp(min=0.0)
    y = boxes[..., 1::2].clamp(min=0.0)
    x = torch.minimum(x, torch.full_like(x, 1.0) * width)
    y = torch.minimum(y, torch.full_like(y, 1.0) * height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def grid_anchors(generator, feats: list[Tensor], padded_size) -> list[Tensor]:
    """`AnchorGenerator.grid_anchors` with symbolic sizes: Tensor[H_l * W_l * A_l, 4] per level.

    Level strides are (Hp // H_l, Wp // W_l) when the generator derives them from the padded
    size (`level_strides`, as torchvision), else its configured strides.
    """
    out = []
    derive = hasattr(generator, "level_strides")
    for x, stride, cell in zip(feats, generator.strides, generator.cell_anchors()):
        h, w = x.shape[-2], x.shape[-1]
        sy, sx = (padded_size[0] // h, padded_size[1] // w) if derive else (stride, stride)
        shifts_x = torch.arange(w, dtype=torch.float32, device=x.device) * sx
        shifts_y = torch.arange(h, dtype=torch.float32, device=x.device) * sy
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
        out.append((shifts + cell.to(x.device)[None]).reshape(-1, 4))
    return out


def pool_rois(pooler: RoIPooler, features: dict[str, Tensor], boxes: Tensor, batch_idx: Tensor) -> Tensor:
    """`RoIPooler.forward` with torchvision's ops, level by level: Tensor[R, C, S, S]."""
    feats = [features[name] for name in pooler.in_features]
    rois = torch.cat([batch_idx[:, None].to(boxes.dtype), boxes], dim=1)
    size = (pooler.output_size, pooler.output_size)

    def pool(x: Tensor, r: Tensor, stride: int) -> Tensor:
        if pooler.pool_type == "pool":
            return roi_pool(x, r.to(x.dtype), size, spatial_scale=1.0 / stride)
        return roi_align(
            x,
            r.to(x.dtype),
            size,
            spatial_scale=1.0 / stride,
            sampling_ratio=pooler.sampling_ratio,
            aligned=pooler.aligned,
        )

    if len(feats) == 1:
        return pool(feats[0], rois, pooler.strides[0])
    levels = assign_fpn_levels(
        boxes,
        pooler.k_min,
        pooler.k_max,
        canonical_scale=pooler.canonical_scale,
        canonical_level=pooler.canonical_level,
    )
    # pool each level's RoIs, then one gather puts the rows back in RoI order (ONNX has no
    # in-place index_put: a ScatterND per level would copy the whole output each time)
    indices, pooled = [], []
    for level, (x, stride) in enumerate(zip(feats, pooler.strides)):
        idx = torch.nonzero(levels == level).squeeze(1)
        indices.append(idx)
        pooled.append(pool(x, rois[idx], stride).to(feats[0].dtype))
    return torch.cat(pooled)[torch.argsort(torch.cat(indices))]


class ExportableDetector(nn.Module):
    """`images` float32 Tensor[N, 3, H, W] in 0..1 (and, without RPN, `proposals` Tensor[P, 4] in input
    pixels with `proposal_batch_idx` int64 Tensor[P]) -> packed detections in input pixels:

    boxes Tensor[D, 4] XYXY, scores Tensor[D], labels int64 Tensor[D], batch_idx int64 Tensor[D]
    (+ mask_probs Tensor[D, M, M] for Mask R-CNN, in the box's frame; + keypoints Tensor[D, Kp, 3]
    (x, y, 1) in input pixels and keypoints_scores Tensor[D, Kp] for Keypoint R-CNN).

    `labels` are the model's labels 1..K, or `category_ids[label - 1]` when `category_ids` is given.
    `max_detections` overrides the model's detections per image.
    """

    def __init__(self, model: nn.Module, *, max_detections: int | None = None, category_ids=None):
        super().__init__()
        check_exportable(model)
        if model.training:
            raise ValueError("export needs a model in eval mode: call model.eval() first")
        self.model = model
        heads = model.roi_heads
        self.max_detections = int(max_detections) if max_detections is not None else heads.detections_per_image
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.has_rpn = not model.requires_proposals
        self.has_masks = model.has_masks
        self.has_keypoints = model.has_keypoints
        self.category_ids = None
        if category_ids is not None:
            ids = torch.as_tensor(list(category_ids), dtype=torch.int64)
            if ids.numel() != model.num_classes:
                raise ValueError(
                    f"category_ids has {ids.numel()} entries but the model has {model.num_classes} classes"
                )
            self.register_buffer("category_ids", ids, persistent=False)

    @property
    def output_names(self) -> list[str]:
        names = ["boxes", "scores", "labels", "batch_idx"]
        names += ["mask_probs"] if self.has_masks else []
        return names + ["keypoints", "keypoints_scores"] if self.has_keypoints else names

    @property
    def input_names(self) -> list[str]:
        return ["images"] if self.has_rpn else ["images", "proposals", "proposal_batch_idx"]

    # ------------------------------------------------------------------ stages
    def preprocess(self, images: Tensor) -> tuple[Tensor, object, object]:
        """Normalise, resize as the model's transform does, pad to the size divisor."""
        t = self.model.transform
        x = (images.float() - t.mean) / t.std
        h, w = images.shape[-2], images.shape[-1]
        rh, rw = h, w
        if t.min_size is not None:
            scale = t.min_size / torch.sym_min(h, w)
            if t.max_size is not None:
                scale = torch.sym_min(scale, t.max_size / torch.sym_max(h, w))
            rh, rw = torch.sym_int(h * scale), torch.sym_int(w * scale)  # floor: sizes are positive
            x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
        d = t.size_divisible
        # padded size as a rounded-up multiple: export's range analysis sees it is >= d
        x = F.pad(x, (0, (rw + d - 1) // d * d - rw, 0, (rh + d - 1) // d * d - rh))
        return x, rh, rw

    def rpn_proposals(self, features: dict[str, Tensor], height, width, padded_size) -> tuple[Tensor, Tensor]:
        rpn = self.model.rpn
        feats = [features[name] for name in rpn.in_features]
        logits, deltas, counts = rpn.head(feats)
        n = logits.shape[0]
        anchors = torch.cat(grid_anchors(rpn.anchor_generator, feats, padded_size))
        proposals = rpn.box_coder.decode(deltas, anchors.expand(n, -1, -1))  # [N, A, 4]
        pre_nms = rpn.pre_nms_top_n[False]
        top_idx, level_ids, offset = [], [], 0
        for level, count in enumerate(counts):
            k = torch.sym_min(pre_nms, count)
            top_idx.append(logits[:, offset : offset + count].topk(k, dim=1).indices + offset)
            level_ids.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
            offset = offset + count
        top_idx = torch.cat(top_idx, 1)  # [N, K']
        levels = torch.cat(level_ids).expand(n, -1)
        scores = torch.sigmoid(logits.gather(1, top_idx).float())
        boxes = clip_boxes_symbolic(proposals.gather(1, top_idx[..., None].expand(-1, -1, 4)), height, width)
        wh = boxes[..., 2:] - boxes[..., :2]
        keep = (wh >= rpn.min_box_size).all(-1) & (scores >= rpn.score_threshold)
        batch_idx = torch.arange(n, device=boxes.device)[:, None].expand_as(levels)
        boxes, scores, levels, batch_idx = boxes[keep], scores[keep], levels[keep], batch_idx[keep]
        groups = batch_idx * len(counts) + levels
        kept = grouped_nms(boxes, scores, groups, rpn.nms_threshold, torch.sym_max(height, width))
        rows, kept_batch_idx = first_k_per_image(batch_idx[kept], n, rpn.post_nms_top_n[False])
        return boxes[kept[rows]], kept_batch_idx

    def detect(self, features: dict[str, Tensor], proposals: Tensor, batch_idx: Tensor, num_images, height, width):
        heads = self.model.roi_heads
        # the heads' box branch (every stage of a cascade: its boxes are clipped to the image between stages)
        one = torch.ones((), dtype=torch.float32, device=proposals.device)
        image_sizes = torch.stack((one * height, one * width)).expand(num_images, 2)  # [N, 2] (h, w)
        pool = partial(pool_rois, heads.box_pooler)
        scores, box_deltas, proposals = heads.box_branch_scores(features, proposals, batch_idx, image_sizes, pool)
        k = heads.num_classes
        boxes = decode_class_boxes(heads.box_coder, box_deltas, proposals, k)  # [R, K, 4]
        r = scores.shape[0]
        boxes = clip_boxes_symbolic(boxes, height, width)
        labels = torch.arange(1, k + 1, device=scores.device).expand(r, k)
        batch_idx = batch_idx[:, None].expand(r, k)  # one candidate per (RoI, class)
        boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
        batch_idx = batch_idx.reshape(-1)
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (scores > heads.score_threshold) & (wh >= heads.min_box_size).all(1)
        boxes, scores, labels, batch_idx = boxes[keep], scores[keep], labels[keep], batch_idx[keep]
        bound = torch.sym_max(height, width)
        kept = grouped_nms(boxes, scores, batch_idx * (k + 1) + labels, heads.nms_threshold, bound)
        rows, det_batch_idx = first_k_per_image(batch_idx[kept], num_images, self.max_detections)
        kept = kept[rows]
        return boxes[kept], scores[kept], labels[kept], det_batch_idx

    def mask_probs(self, features: dict[str, Tensor], boxes: Tensor, labels: Tensor, batch_idx: Tensor) -> Tensor:
        heads = self.model.roi_heads
        logits = heads.mask_head(pool_rois(heads.mask_pooler, features, boxes, batch_idx))  # [D, K, M, M]
        return logits[torch.arange(logits.shape[0], device=logits.device), labels - 1].float().sigmoid()

    def keypoints(self, features: dict[str, Tensor], boxes: Tensor, batch_idx: Tensor) -> tuple[Tensor, Tensor]:
        heads = self.model.roi_heads
        heatmaps = heads.keypoint_head(pool_rois(heads.keypoint_pooler, features, boxes, batch_idx))
        return heatmaps_to_keypoints_batched(heatmaps, boxes)

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, proposals: Tensor | None = None, proposal_batch_idx: Tensor | None = None):
        n, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        x, rh, rw = self.preprocess(images)
        features = self.model.backbone(x)
        resized = self.model.transform.min_size is not None
        if self.has_rpn:
            boxes, batch_idx = self.rpn_proposals(features, rh, rw, x.shape[-2:])
        else:
            if proposals is None or proposal_batch_idx is None:
                raise ValueError("a detector without RPN needs `proposals` Tensor[P, 4] and `proposal_batch_idx` [P]")
            boxes = proposals.float().reshape(-1, 4)
            if resized:
                boxes = boxes * xyxy_factors((h, w), (rh, rw), images)
            batch_idx = proposal_batch_idx.to(torch.int64).reshape(-1)
        boxes, scores, labels, det_batch_idx = self.detect(features, boxes, batch_idx, n, rh, rw)
        out_boxes = boxes * xyxy_factors((rh, rw), (h, w), images) if resized else boxes
        out_labels = labels if self.category_ids is None else self.category_ids[labels - 1]
        outputs = [out_boxes, scores, out_labels, det_batch_idx]
        if self.has_masks:
            outputs.append(self.mask_probs(features, boxes, labels, det_batch_idx))
        if self.has_keypoints:
            keypoints, keypoint_scores = self.keypoints(features, boxes, det_batch_idx)
            if resized:  # (x, y) to input pixels, as the boxes
                factors = xyxy_factors((rh, rw), (h, w), images)[:2]
                keypoints = torch.cat([keypoints[..., :2] * factors, keypoints[..., 2:]], -1)
            outputs += [keypoints, keypoint_scores]
        return tuple(outputs)


def xyxy_factors(from_hw, to_hw, ref: Tensor) -> Tensor:
    """(sx, sy, sx, sy) Tensor[4] mapping boxes between (possibly symbolic) sizes, float32 as
    `detkit.structures.packed.scale_factors` computes them."""
    one = torch.ones((), dtype=torch.float32, device=ref.device)
    ry = (one * to_hw[0]) / (one * from_hw[0])
    rx = (one * to_hw[1]) / (one * from_hw[1])
    return torch.stack((rx, ry, rx, ry))


def _cubic_taps(cells: Tensor, size, src: int) -> tuple[Tensor, Tensor]:
    """Source indices and weights of a bicubic resize (A = -0.75, align_corners=False, as `F.interpolate`)
    of a length-`src` axis to `cells` `Tensor[D]` samples, on a grid of `size` >= every cell count:
    (indices `Tensor[D, size, 4]` int64 clamped to the axis, weights `Tensor[D, size, 4]`)."""
    a = -0.75
    pos = torch.arange(size, device=cells.device, dtype=torch.float32)[None]  # [1, size]
    coord = (pos + 0.5) * (src / cells[:, None]) - 0.5
    first = coord.floor()
    t = (coord - first)[..., None] + torch.tensor([1.0, 0.0, -1.0, -2.0], device=cells.device)  # distances
    d = t.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # 1 < |d| < 2
    weights = torch.where(d <= 1, near, far)
    offsets = torch.arange(-1, 3, device=cells.device)
    index = (first.long()[..., None] + offsets).clamp(0, src - 1)
    return index, weights


def heatmaps_to_keypoints_batched(heatmaps: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """`detkit.heads.keypoint_head.heatmaps_to_keypoints` for export: every detection's bicubic resize to
    ceil(w) x ceil(h) on one grid of the largest such size (cells outside a box's own size masked), a
    separable gather of 4 taps per axis, one keypoint at a time (memory D x grid).

    heatmaps `Tensor[D, Kp, M, M]`, boxes `Tensor[D, 4]` -> (keypoints (x, y, 1) `Tensor[D, Kp, 3]`,
    scores `Tensor[D, Kp]`). Equal to the per-detection resize up to float rounding (an arg-max between
    near-equal cells may move by one cell).
    """
    d, kp, m = heatmaps.shape[0], heatmaps.shape[1], heatmaps.shape[-1]
    boxes = boxes.float()
    sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)  # [D, 2] (w, h)
    cells = sizes.ceil()
    # the grid: the largest cell counts (a 1 x 1 floor keeps the reduction defined without detections)
    largest = torch.cat([cells, cells.new_ones((1, 2))]).amax(0).long()
    grid_w, grid_h = largest[0].item(), largest[1].item()
    torch._check(grid_w >= 1)
    torch._check(grid_h >= 1)
    ix, wx = _cubic_taps(cells[:, 0], grid_w, m)  # [D, W, 4]
    iy, wy = _cubic_taps(cells[:, 1], grid_h, m)  # [D, H, 4]
    cols = torch.arange(grid_w, device=boxes.device)
    rows = torch.arange(grid_h, device=boxes.device)
    inside = (rows[None, :, None] < cells[:, 1, None, None]) & (cols[None, None, :] < cells[:, 0, None, None])
    xs, ys, scores = [], [], []
    for k in range(kp):
        maps = heatmaps[:, k].float()  # [D, M, M]
        # along x: [D, M, W]; then along y: [D, H, W]
        along_x = (
            maps.gather(2, ix.reshape(d, 1, grid_w * 4).expand(d, m, grid_w * 4)).view(d, m, grid_w, 4) * wx[:, None]
        ).sum(-1)
        picked = along_x.gather(1, iy.reshape(d, grid_h * 4, 1).expand(d, grid_h * 4, grid_w)).view(
            d, grid_h, 4, grid_w
        )
        resized = (picked * wy[..., None]).sum(2)
        resized = torch.where(inside, resized, torch.full_like(resized, float("-inf")))
        best, pos = resized.flatten(1).max(1)
        y = torch.div(pos, largest[0], rounding_mode="floor")  # tensor arithmetic: ONNX has no symbolic modulo
        xs.append(pos - y * largest[0])
        ys.append(y)
        scores.append(best)
    x, y = torch.stack(xs, 1).float(), torch.stack(ys, 1).float()  # [D, Kp]
    correction = sizes / cells
    keypoints = torch.stack(
        [
            (x + 0.5) * correction[:, 0:1] + boxes[:, 0:1],
            (y + 0.5) * correction[:, 1:2] + boxes[:, 1:2],
            torch.ones_like(x),
        ],
        -1,
    )
    return keypoints, torch.stack(scores, 1)
