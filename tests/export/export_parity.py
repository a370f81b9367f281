"""Helpers of the export tests: detectors with spread-out scores, test images, detection matching."""

from __future__ import annotations

import numpy as np
import torch

from detkit.data.shapes import ShapesConfig, render_shapes_image
from detkit.models import build_model

BOX_TOL = 0.5  # pixels
SCORE_TOL = 1e-4
MASK_AGREEMENT = 0.999
# keypoints (pixels): the boxes may differ by BOX_TOL, and an arg-max between near-equal heatmap cells by one cell
KEYPOINT_TOL = 2.0
KEYPOINT_SCORE_TOL = 1e-3


def detector(
    name: str,
    num_classes: int = 3,
    seed: int = 0,
    *,
    cls_std: float = 0.5,
    box_std: float | None = 0.5,
    rpn_std: float = 0.5,
    fan_in_backbone: bool = False,
    **kwargs,
) -> torch.nn.Module:
    """A registered detector with random weights whose box predictor and RPN logits spread the scores.

    Untrained heads give near-equal scores (and so near-ties in NMS and top-k); larger
    random weights give distinct scores, as a trained model has. The right scale depends on
    the backbone's feature magnitude: saturated scores (exactly 1.0) tie as well.
    `box_std=None` keeps the box regressor's own small init. `fan_in_backbone` re-draws the
    backbone body's convolutions (Kaiming, fan-in): with fan-out init and frozen (identity) BN
    a random MobileNetV2's activations shrink ~1000x per stage (P5 ~1e-8), so every RPN
    position of the coarse levels scores the same and NMS order is a tie-break.
    """
    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes, **kwargs).eval()
    with torch.no_grad():
        for m in model.backbone.body.modules() if fan_in_backbone else ():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        for p in predictor.cls_score.parameters():
            p.normal_(0, cls_std)
        for p in predictor.bbox_pred.parameters() if box_std is not None else ():
            p.normal_(0, box_std)
        if model.rpn is not None:
            for p in model.rpn.head.cls_logits.parameters():
                p.normal_(0, rpn_std)
    return model


def shapes_images(count: int, size: int = 128, seed: int = 0) -> list[np.ndarray]:
    """Synthetic shapes images float32 [3, S, S] in 0..1."""
    rng = np.random.default_rng(seed)
    cfg = ShapesConfig(image_size=size)
    return [render_shapes_image(rng, cfg)[0].transpose(2, 0, 1).astype(np.float32) / 255 for _ in range(count)]


def random_size_images(sizes: list[tuple[int, int]], seed: int = 1) -> list[np.ndarray]:
    """Crops of a 2x2 tiling of shapes images at the given (H, W), float32 [3, H, W]."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        tiles = shapes_images(4, size=max(h, w), seed=int(rng.integers(1 << 30)))
        big = np.concatenate([np.concatenate(tiles[:2], 2), np.concatenate(tiles[2:], 2)], 1)
        y, x = int(rng.integers(big.shape[1] - h + 1)), int(rng.integers(big.shape[2] - w + 1))
        out.append(np.ascontiguousarray(big[:, y : y + h, x : x + w]))
    return out


def eager_predict(model, images: list[np.ndarray], proposals=None) -> list[dict[str, np.ndarray]]:
    props = [torch.from_numpy(p) for p in proposals] if proposals is not None else None
    with torch.no_grad():
        dets = model.predict([torch.from_numpy(img) for img in images], proposals=props)
    return [{k: v.numpy() for k, v in d.items()} for d in dets]


def assert_same_detections(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], where: str) -> None:
    """Same number of detections; each reference detection has one in `got` with the same label,
    box within BOX_TOL px and score within SCORE_TOL (order may differ only between near-equal
    scores); masks (when present) agree on >= MASK_AGREEMENT of the pixels, keypoints (when present) lie
    within KEYPOINT_TOL px with scores within KEYPOINT_SCORE_TOL."""
    n = len(ref["labels"])
    assert len(got["labels"]) == n, f"{where}: {len(got['labels'])} detections, eager has {n}"
    used = np.zeros(n, dtype=bool)
    for i in range(n):
        ok = (
            ~used
            & (got["labels"] == ref["labels"][i])
            & (np.abs(got["boxes"] - ref["boxes"][i]).max(1) <= BOX_TOL)
            & (np.abs(got["scores"] - ref["scores"][i]) <= SCORE_TOL)
        )
        candidates = np.nonzero(ok)[0]
        assert candidates.size, (
            f"{where}: eager detection {i} (label {ref['labels'][i]}, score {ref['scores'][i]:.6f}, "
            f"box {ref['boxes'][i]}) has no match"
        )
        j = candidates[np.argmin(np.abs(got["scores"][candidates] - ref["scores"][i]))]
        used[j] = True
        if "masks" in ref:
            agree = (ref["masks"][i] == got["masks"][j]).mean() if ref["masks"][i].size else 1.0
            assert agree >= MASK_AGREEMENT, f"{where}: mask of detection {i} agrees on {agree:.5f} of the pixels"
        if "keypoints" in ref:
            error = np.abs(got["keypoints"][j] - ref["keypoints"][i]).max(initial=0)
            score_error = np.abs(got["keypoints_scores"][j] - ref["keypoints_scores"][i]).max(initial=0)
            assert error <= KEYPOINT_TOL, f"{where}: keypoints of detection {i} differ by {error:.3f} px"
            assert score_error <= KEYPOINT_SCORE_TOL, f"{where}: keypoint scores of detection {i}: {score_error:.2e}"


def packed_to_list(outputs, num_images: int, names: list[str]) -> list[dict[str, np.ndarray]]:
    """Packed program outputs (tensors in `names` order) -> per-image dicts of numpy arrays."""
    from detkit.export import split_packed

    arrays = {k: v.detach().numpy() for k, v in zip(names, outputs)}
    return split_packed(arrays, num_images)
