"""COCO's greedy box matching (`COCOeval.evaluateImg`), vectorised over every (image, class) group.

The error analysis needs matchings that a plain COCO evaluation does not give: at IoU 0.5 with
the matched pairs, and at IoU 0.1 with other classes' objects as ignored crowds (the COCO
site's Sim / Oth curves). Running the COCO tools once per matching costs a whole evaluation
each; this module does the same matching in numpy, one detection rank at a time across all
groups, and accumulates the same 101-point precision.

COCO's rule, per (image, class) and area range: detections in score order (ties in results
order), the first `max_dets` only; each takes, among the objects it overlaps by IoU >= the
threshold, the one of highest IoU (ties: the later object), preferring objects that are not
ignored; a non-crowd object is taken once, a crowd any number of times. Ignored objects are
crowds and objects outside the area range; a detection matched to one, or unmatched and
outside the area range, is ignored. IoU is pycocotools': of boxes (`BoxIoU`, `maskApi.c`'s
bbIou arithmetic) or of masks (`MaskIoU`, its `rleIou`); for a crowd, the intersection over
the detection's area.

Shape shorthand: N detections, G objects, K classes, A area ranges, R recall thresholds (101),
M objects of one image.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "AREA_RANGES",
    "RECALL_THRESHOLDS",
    "BoxIoU",
    "MaskIoU",
    "box_iou_xywh",
    "grouped_average_precision",
    "match_groups",
    "precision_at_recall",
    "precision_by_class",
]

AREA_RANGES = np.array([[0, 1e5**2], [0, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
"""COCOeval's area ranges (all, small, medium, large) in square pixels."""
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def _iou(det: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """`Tensor[a, M]` IoU of one XYWH detection per row (`Tensor[a, 4]`) with its row's objects
    (`Tensor[a, M, 4]`), in pycocotools' order of operations; crowds (`Tensor[a, M]` bool) divide
    by the detection's area."""
    dx, dy, dw, dh = (det[:, None, j] for j in range(4))
    gx, gy, gw, gh = (gts[..., j] for j in range(4))
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    det_area = dw * dh
    union = np.where(crowd, det_area, det_area + gw * gh - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def box_iou_xywh(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """`Tensor[D, G]` IoU of XYWH boxes as COCO computes it (pycocotools' `mask.iou` arithmetic): for
    a crowd object (`crowd` `Tensor[G]` bool) the intersection over the detection's area."""
    crowd = np.zeros(len(gts), bool) if crowd is None else np.asarray(crowd, bool)
    return _iou(dets, np.broadcast_to(gts, (len(dets), len(gts), 4)), np.broadcast_to(crowd, (len(dets), len(gts))))


class BoxIoU:
    """`pair_iou` of `match_groups` for XYWH boxes: `(dets Tensor[a], objects Tensor[a, M], crowd
    Tensor[a, M]) -> Tensor[a, M]` IoU of each row's detection with its objects."""

    def __init__(self, det_box: np.ndarray, gt_box: np.ndarray):
        self.det_box, self.gt_box = det_box, gt_box

    def __call__(self, dets: np.ndarray, objects: np.ndarray, crowd: np.ndarray) -> np.ndarray:
        return _iou(self.det_box[dets], self.gt_box[objects], crowd)

    def pairs(self, dets: np.ndarray, objects: np.ndarray) -> np.ndarray:
        """`Tensor[D, G]` IoU (no crowds) of detections and objects of one image."""
        return box_iou_xywh(self.det_box[dets], self.gt_box[objects])


class MaskIoU:
    """`pair_iou` of `match_groups` for masks (compressed RLEs): `mask.iou` (pycocotools' `rleIou`) of every
    detection with every object of its image, computed once per image (plain and crowd), looked up.
    `det_rles` / `gt_rles` are lists in the order of `det_image` / `gt_image` (image indices)."""

    def __init__(self, det_image: np.ndarray, det_rles: list, gt_image: np.ndarray, gt_rles: list):
        from faster_coco_eval.core import mask as mask_utils  # the backend's RLE arithmetic

        n = len(det_image)
        self.gt_pos = np.zeros(len(gt_image), np.int64)  # each object's position among its image's objects
        self.row_start = np.zeros(n, np.int64)  # where a detection's row starts in the flat tables
        plain, crowd, start = [], [], 0
        num_images = int(max(det_image.max(initial=-1), gt_image.max(initial=-1))) + 1
        dets_of = np.split(
            np.argsort(det_image, kind="stable"), np.cumsum(np.bincount(det_image, minlength=num_images))[:-1]
        )
        gts_of = np.split(
            np.argsort(gt_image, kind="stable"), np.cumsum(np.bincount(gt_image, minlength=num_images))[:-1]
        )
        for d, g in zip(dets_of, gts_of):
            self.gt_pos[g] = np.arange(len(g))
            if len(d) == 0 or len(g) == 0:
                continue
            dr, gr = [det_rles[i] for i in d], [gt_rles[j] for j in g]
            plain.append(np.asarray(mask_utils.iou(dr, gr, [0] * len(g)), np.float64).reshape(-1))
            crowd.append(np.asarray(mask_utils.iou(dr, gr, [1] * len(g)), np.float64).reshape(-1))
            self.row_start[d] = start + np.arange(len(d)) * len(g)
            start += len(d) * len(g)
        self.plain = np.concatenate(plain) if plain else np.zeros(0)
        self.crowd = np.concatenate(crowd) if crowd else np.zeros(0)

    def __call__(self, dets: np.ndarray, objects: np.ndarray, crowd: np.ndarray) -> np.ndarray:
        at = self.row_start[dets][:, None] + self.gt_pos[objects]
        return np.where(crowd, self.crowd[at], self.plain[at])

    def pairs(self, dets: np.ndarray, objects: np.ndarray) -> np.ndarray:
        """`Tensor[D, G]` IoU (no crowds) of detections and objects of one image."""
        return self.plain[self.row_start[dets][:, None] + self.gt_pos[objects][None, :]]


def _last_best(values: np.ndarray) -> np.ndarray:
    """Index of the largest value along the last axis; among equal ones the last (COCO's `<` test)."""
    return values.shape[-1] - 1 - np.argmax(values[..., ::-1], axis=-1)


def match_groups(
    det_image: np.ndarray,
    det_class: np.ndarray,
    det_area: np.ndarray,
    det_rank: np.ndarray,
    gt_image: np.ndarray,
    gt_class: np.ndarray,
    gt_area: np.ndarray,
    gt_crowd: np.ndarray,
    pair_iou: BoxIoU | MaskIoU,
    *,
    iou_threshold: float,
    area_ranges: np.ndarray = AREA_RANGES,
    forgiven: np.ndarray | None = None,
    max_dets: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """COCO's matching of every detection, per area range.

    Detections: image and class indices, areas (box or mask) and `det_rank` (0, 1, ... by score
    within their (image, class); rank >= `max_dets` is not matched). Objects: image and class
    indices, annotated `gt_area` and crowd flags, in annotation order. `pair_iou`: `BoxIoU` or
    `MaskIoU` of these detections and objects. `forgiven`
    (`Tensor[K, K]` bool): `forgiven[c, k]` adds the objects of class k to class c's groups as
    ignored crowds (after c's own objects, as the COCO site's analysis adds them).

    Returns `det_gt` `Tensor[N, A]` (the object index each detection matched, -1 for none) and
    `det_ignored` `Tensor[N, A]` (matched to an ignored object, or unmatched outside the range).
    """
    n, num_ranges = len(det_area), len(area_ranges)
    det_gt = np.full((n, num_ranges), -1, np.int64)
    det_ignored = np.zeros((n, num_ranges), bool)
    outside = (det_area[:, None] < area_ranges[:, 0]) | (det_area[:, None] > area_ranges[:, 1])  # Tensor[N, A]
    evaluated = np.flatnonzero(det_rank < max_dets)
    if len(evaluated) and len(gt_area):
        num_classes = int(max(det_class.max(initial=0), gt_class.max(initial=0))) + 1
        order = evaluated[np.lexsort((det_rank[evaluated], det_class[evaluated], det_image[evaluated]))]
        key = det_image[order] * num_classes + det_class[order]
        starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
        counts = np.diff(np.r_[starts, len(order)])
        group_image, group_class = det_image[order[starts]], det_class[order[starts]]
        by_image = np.argsort(gt_image, kind="stable")  # objects of an image stay in annotation order
        num_images = int(max(det_image.max(), gt_image.max())) + 1
        first = np.searchsorted(gt_image[by_image], np.arange(num_images + 1))
        objects = np.diff(first)[group_image]  # Tensor[groups] objects in the group's image
        outside_gt = (gt_area[:, None] < area_ranges[:, 0]) | (gt_area[:, None] > area_ranges[:, 1])  # Tensor[G, A]
        # groups with as many objects in their image go together: Tensor[groups, M] without much padding
        for width in np.unique(objects[objects > 0]):
            groups = np.flatnonzero(objects == width)
            _match_bucket(
                groups, int(width), order, starts, counts, group_image, group_class, by_image, first,
                gt_class, gt_crowd, outside_gt, pair_iou, iou_threshold, forgiven, det_gt, det_ignored,
            )  # fmt: skip
    det_ignored |= (det_gt < 0) & outside
    not_evaluated = np.ones(n, bool)
    not_evaluated[evaluated] = False
    det_ignored[not_evaluated] = False
    return det_gt, det_ignored


def _match_bucket(
    groups, width, order, starts, counts, group_image, group_class, by_image, first,
    gt_class, gt_crowd, outside_gt, pair_iou, threshold, forgiven, det_gt, det_ignored,
) -> None:  # fmt: skip
    """Match the detections of `groups` (whose images have `width` objects each), in place."""
    cand = by_image[first[group_image[groups]][:, None] + np.arange(width)]  # Tensor[g, M] object indices
    cls = group_class[groups][:, None]
    same = gt_class[cand] == cls
    takes_part = same if forgiven is None else same | forgiven[cls, gt_class[cand]]
    rank = np.argsort(np.where(same, 0, 1) + np.where(takes_part, 0, 2), axis=1, kind="stable")  # own objects first
    cand, same, takes_part = (np.take_along_axis(x, rank, axis=1) for x in (cand, same, takes_part))
    crowd_like = takes_part & (~same | gt_crowd[cand])  # crowds, and other classes' objects (forgiven)
    ignored = takes_part[:, None, :] & (crowd_like[:, None, :] | outside_gt[cand].transpose(0, 2, 1))  # [g, A, M]
    taken = np.zeros(ignored.shape, bool)
    group_starts, group_counts = starts[groups], counts[groups]
    for r in range(int(group_counts.max())):
        active = np.flatnonzero(group_counts > r)
        dets = order[group_starts[active] + r]
        iou = pair_iou(dets, cand[active], crowd_like[active])  # Tensor[a, M]
        hit = (takes_part[active] & (iou >= threshold))[:, None, :]
        ign, tak = ignored[active], taken[active]
        values = np.broadcast_to(iou[:, None, :], ign.shape)
        kept_ok = hit & ~ign & ~tak  # objects that count, still free
        ign_ok = hit & ign & ~tak  # ignored objects (crowds are never marked taken)
        found = kept_ok.any(-1)  # Tensor[a, A]
        chosen = np.where(
            found,
            _last_best(np.where(kept_ok, values, -np.inf)),
            _last_best(np.where(ign_ok, values, -np.inf)),
        )
        matched = found | ign_ok.any(-1)
        object_index = cand[active][np.arange(len(active))[:, None], chosen]  # Tensor[a, A]
        det_gt[dets] = np.where(matched, object_index, -1)
        det_ignored[dets] = matched & ~found
        once = matched & ~np.take_along_axis(crowd_like[active], chosen, 1)  # non-crowd objects are taken once
        rows, ranges = np.nonzero(once)
        taken[active[rows], ranges, chosen[rows, ranges]] = True


def precision_at_recall(tp: np.ndarray, num_gt: int) -> np.ndarray:
    """`Tensor[R]` COCO's interpolated precision at the 101 recall thresholds of detections already
    ranked by score (`tp`: `Tensor[D]` bool) and `num_gt` objects (`COCOeval.accumulate`). Precision is
    tp / (tp + fp) as faster-coco-eval computes it, so that these curves and its C50 / C75 / Loc agree to
    the bit; pycocotools adds one ulp to the denominator (last-bit differences)."""
    if num_gt <= 0:
        raise ValueError("precision_at_recall needs at least one ground-truth object")
    tps = np.cumsum(tp, dtype=np.float64)
    fps = np.cumsum(~tp, dtype=np.float64)
    recall = tps / num_gt
    precision = tps / (tps + fps)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    q = np.zeros(len(RECALL_THRESHOLDS))
    inside = idx < len(precision)
    q[inside] = precision[idx[inside]]
    return q


def grouped_average_precision(group: np.ndarray, tp: np.ndarray, num_gt: np.ndarray, rows: int = 2048) -> np.ndarray:
    """`Tensor[P]` `precision_at_recall(...).mean()` of P small groups at once (e.g. each image's classes).

    `group` (`Tensor[D]`, sorted) is each detection's group, detections ranked by score within it;
    `tp` `Tensor[D]` bool; `num_gt` `Tensor[P]` (> 0) objects per group. A group without detections
    has AP 0. Groups are laid out as rows of a `[P, longest group]` matrix, `rows` at a time.
    """
    num_groups = len(num_gt)
    out = np.zeros(num_groups)
    if len(group) == 0:
        return out
    starts = np.searchsorted(group, np.arange(num_groups + 1))
    width = int(np.diff(starts).max())
    col = np.arange(len(group)) - starts[group]
    for lo in range(0, num_groups, rows):
        hi = min(lo + rows, num_groups)
        sel = slice(starts[lo], starts[hi])
        valid = np.zeros((hi - lo, width), bool)
        hits = np.zeros((hi - lo, width), bool)
        valid[group[sel] - lo, col[sel]] = True
        hits[group[sel] - lo, col[sel]] = tp[sel]
        tps = np.cumsum(hits, axis=1, dtype=np.float64)
        fps = np.cumsum(valid & ~hits, axis=1, dtype=np.float64)
        recall = np.where(valid, tps / num_gt[lo:hi, None], np.inf)  # past a group's end: never reached
        with np.errstate(invalid="ignore"):
            precision = np.where(valid, tps / (tps + fps), 0.0)
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        reached = (recall[:, :, None] >= RECALL_THRESHOLDS) & valid[:, :, None]  # Tensor[g, width, R]
        first = np.argmax(reached, axis=1)  # searchsorted(recall, threshold, "left") per row
        q = np.where(reached.any(axis=1), np.take_along_axis(precision, first, axis=1), 0.0)
        out[lo:hi] = q.mean(axis=1)
    return out


def precision_by_class(
    det_class: np.ndarray,
    det_score: np.ndarray,
    det_order: np.ndarray,
    det_evaluated: np.ndarray,
    det_gt: np.ndarray,
    det_ignored: np.ndarray,
    num_gt: np.ndarray,
) -> np.ndarray:
    """`Tensor[R, K, A]` precision of a matching (`match_groups`' outputs) as `COCOeval.accumulate`
    gives it: -1 where a class has no (non-ignored) objects in a range (`num_gt` `Tensor[K, A]`).
    Detections rank by score, then `det_order` (COCO's image order and rank within the image)."""
    num_classes, num_ranges = num_gt.shape
    out = -np.ones((len(RECALL_THRESHOLDS), num_classes, num_ranges))
    for a in range(num_ranges):
        keep = np.flatnonzero(det_evaluated & ~det_ignored[:, a])
        keep = keep[np.lexsort((det_order[keep], -det_score[keep], det_class[keep]))]
        cls, tp = det_class[keep], det_gt[keep, a] >= 0
        bounds = np.searchsorted(cls, np.arange(num_classes + 1))
        for k in np.flatnonzero(num_gt[:, a] > 0):
            out[:, k, a] = precision_at_recall(tp[bounds[k] : bounds[k + 1]], int(num_gt[k, a]))
    return out
