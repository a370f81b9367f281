"""Keypoint head (Keypoint R-CNN, the Mask R-CNN paper's section 5), its heatmap targets and decoding.

Shape shorthand: R RoIs, C channels, S pooled resolution (14), K keypoints, M heatmap resolution
(4 * S = 56), D detections. Keypoints are `Tensor[..., K, 3]` rows (x, y, v) in image pixels with
COCO's visibility v: 0 not labelled, 1 labelled but hidden, 2 labelled and visible.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.layers import ConvNormAct, NormSpec

__all__ = ["KeypointHead", "heatmaps_to_keypoints", "keypoint_loss", "keypoint_targets"]


class KeypointHead(nn.Module):
    """`len(conv_dims)` 3x3 convs + ReLU, a stride-2 transposed conv (kernel 4) to one channel per
    keypoint, then 2x bilinear upsampling.

    Tensor[R, C, S, S] -> heatmap logits Tensor[R, K, 4S, 4S] (14 -> 56). Class-agnostic: one
    heatmap per keypoint, whatever the RoI's class.
    """

    def __init__(
        self, in_channels: int, num_keypoints: int, *, conv_dims: Sequence[int] = (512,) * 8, norm: NormSpec = "none"
    ):
        super().__init__()
        if num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
        layers, c = [], in_channels
        for dim in conv_dims:
            layers.append(ConvNormAct(c, dim, 3, norm=norm, act="relu"))
            c = dim
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(c, num_keypoints, 4, stride=2, padding=1)
        self.num_keypoints = num_keypoints
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.deconv(self.convs(x))
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False, recompute_scale_factor=False)


def keypoint_targets(keypoints: Tensor, boxes: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """The heatmap cell of each keypoint in its RoI: (flat index y * M + x `Tensor[R, K]` int64, valid
    `Tensor[R, K]` bool).

    keypoints `Tensor[R, K, 3]` and boxes `Tensor[R, 4]` in the same pixels. The RoI is cut into
    M x M cells; a keypoint falls in cell floor((p - x1) * M / w) (on the right / bottom edge: the
    last cell). Valid: labelled (v > 0) and inside the RoI; the index is 0 where not valid.
    """
    origin = boxes[:, None, :2]  # [R, 1, 2]
    size = boxes[:, None, 2:] - origin
    xy = keypoints[..., :2]
    cell = ((xy - origin) * (resolution / size)).floor().long()  # [R, K, 2]
    on_far_edge = xy == boxes[:, None, 2:]
    cell = torch.where(on_far_edge, torch.full_like(cell, resolution - 1), cell)
    inside = ((cell >= 0) & (cell < resolution)).all(-1)
    valid = inside & (keypoints[..., 2] > 0)
    index = (cell[..., 1] * resolution + cell[..., 0]) * valid
    return index, valid


def keypoint_loss(logits: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """Cross-entropy over the M*M heatmap positions, averaged over the valid keypoints.

    logits `Tensor[R, K, M, M]`, index / valid `Tensor[R, K]` (`keypoint_targets`). Zero (with a
    gradient path) when no keypoint is valid.
    """
    flat = logits.flatten(2).flatten(0, 1)  # [R*K, M*M]
    rows = torch.nonzero(valid.flatten()).squeeze(1)  # one host sync, as the box loss's positives
    if rows.numel() == 0:
        return logits.sum() * 0
    return F.cross_entropy(flat[rows].float(), index.flatten()[rows])


def heatmaps_to_keypoints(heatmaps: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Keypoints (x, y, 1) `Tensor[D, K, 3]` float32 in the boxes' pixels and their scores `Tensor[D, K]`.

    heatmaps `Tensor[D, K, M, M]` logits, boxes `Tensor[D, 4]`. As torchvision's
    `heatmaps_to_keypoints`: each heatmap is resized (bicubic) to the box's size rounded up,
    ceil(w) x ceil(h) (sides at least 1 px), the arg-max cell j becomes (j + 0.5) * w / ceil(w)
    from the box's corner, and the score is the resized logit there. The sizes differ per box, so
    the resize runs once per detection; one host sync for the sizes.
    """
    d, k = heatmaps.shape[:2]
    keypoints = heatmaps.new_zeros((d, k, 3), dtype=torch.float32)
    scores = heatmaps.new_zeros((d, k), dtype=torch.float32)
    if d == 0:
        return keypoints, scores
    boxes = boxes.float()
    sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)  # [D, 2] (w, h)
    cells = sizes.ceil()
    correction = sizes / cells
    lattice = cells.long().tolist()  # one host sync
    channels = torch.arange(k, device=heatmaps.device)
    for i, (w, h) in enumerate(lattice):
        resized = F.interpolate(heatmaps[i][:, None].float(), size=(h, w), mode="bicubic", align_corners=False)[:, 0]
        pos = resized.flatten(1).argmax(1)  # [K]
        x, y = pos % w, torch.div(pos, w, rounding_mode="floor")
        keypoints[i, :, 0] = (x.float() + 0.5) * correction[i, 0] + boxes[i, 0]
        keypoints[i, :, 1] = (y.float() + 0.5) * correction[i, 1] + boxes[i, 1]
        scores[i] = resized[channels, y, x]
    keypoints[..., 2] = 1
    return keypoints, scores
