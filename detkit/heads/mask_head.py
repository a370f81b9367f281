"""Mask head (Mask R-CNN), mask targets and batched mask pasting.

Shape shorthand: R RoIs, C channels, M mask resolution (28), K classes, H x W image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detkit.heads.box_head import ClassRows
from detkit.layers import NormSpec
from detkit.structures.boxes import box_math_dtype
from detkit.structures.packed import count_per_image


class MaskHead(nn.Module):
    """`len(conv_dims)` 3x3 convs + ReLU, a 2x transposed conv + ReLU, and 1x1 per-class logits.

    Tensor[R, C, 14, 14] -> mask logits Tensor[R, K, 28, 28] (no background channel).
    """

    def __init__(self, in_channels: int, num_classes: int, *, conv_dims=(256, 256, 256, 256), norm: NormSpec = "none"):
        super().__init__()
        from detkit.layers import ConvNormAct

        layers, c = [], in_channels
        for dim in conv_dims:
            layers.append(ConvNormAct(c, dim, 3, norm=norm, act="relu"))
            c = dim
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.mask_logits = nn.Conv2d(c, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def class_rows(self) -> dict[str, ClassRows]:
        """The per-class mask logits (one channel per class, no background) are class-specific."""
        return {"mask_logits.weight": ClassRows(1, False), "mask_logits.bias": ClassRows(1, False)}

    def forward(self, x: Tensor) -> Tensor:
        return self.mask_logits(F.relu(self.deconv(self.convs(x))))


def mask_targets(
    gt_masks: list[Tensor], boxes: Tensor, batch_idx: Tensor, matched_gt: Tensor, resolution: int
) -> Tensor:
    """Crop-and-resize each RoI's matched ground-truth mask to M x M with RoIAlign.

    gt_masks: per image Tensor[K_i, H_i, W_i] (original image pixels); boxes Tensor[R, 4] in the
    same pixels; matched_gt Tensor[R] index into the image's masks. Returns float Tensor[R, M, M].
    Masks differ in size per image, so RoIAlign runs once per image; the RoIs are sorted by
    image and built once, so the loop adds only the mask conversion and RoIAlign per image.
    """
    order = torch.argsort(batch_idx, stable=True)
    counts = count_per_image(batch_idx, len(gt_masks)).tolist()  # one host sync
    # Tensor[R, 5] (index of the matched mask within its image, x1, y1, x2, y2), image by image
    rois = torch.cat([matched_gt[order, None].to(boxes.dtype), boxes[order]], dim=1)
    crops = [
        roi_align(masks[:, None].to(boxes.dtype), image_rois, (resolution, resolution), 1.0)
        for masks, image_rois in zip(gt_masks, rois.split(counts))
        if image_rois.shape[0]
    ]
    out = boxes.new_zeros((boxes.shape[0], resolution, resolution))
    if crops:
        out[order] = torch.cat(crops)[:, 0]
    return out


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    return torch.cat([centre - half, centre + half], dim=1)


def _axis_weights(start: Tensor, length: Tensor, size: int, src: int, dtype: torch.dtype) -> Tensor:
    """Bilinear weights Tensor[R, size, src] that resize a length-`src` axis to `length` pixels at `start`.

    Same sampling as F.interpolate(mode="bilinear", align_corners=False); zero outside the box.
    """
    pos = torch.arange(size, device=start.device, dtype=dtype)[None, :]  # [1, size]
    j = pos - start[:, None].to(dtype)  # position inside the resized mask
    inside = (j >= 0) & (j < length[:, None])
    coord = ((j + 0.5) * (src / length[:, None].to(dtype)) - 0.5).clamp(min=0)
    lo = coord.floor().clamp(max=src - 1)
    frac = coord - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=src - 1)
    w = torch.zeros(start.shape[0], size, src, device=start.device, dtype=dtype)
    w.scatter_add_(2, lo[..., None], (1 - frac)[..., None])
    w.scatter_add_(2, hi[..., None], frac[..., None])
    return w * inside[..., None]


def paste_masks(
    mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], *, threshold: float | None = 0.5, chunk: int = 64
) -> Tensor:
    """Paste M x M mask probabilities into the full image, batched over masks.

    mask_probs Tensor[D, M, M], boxes Tensor[D, 4] (image pixels) -> Tensor[D, H, W]: uint8 0/1
    after `threshold`, or the probabilities when `threshold` is None (float32, float64 for
    float64 input: the box dtype rule of `detkit.structures.boxes`).

    Like torchvision, the mask is padded by one pixel and the box expanded to match, then the
    mask is bilinearly resized to the integer box and placed in the image. Bilinear resizing is
    separable, so each paste is `Wy @ mask @ Wx^T` with precomputed weight matrices: one batched
    matrix product instead of a Python loop over detections.
    """
    h, w = image_size
    d, m = mask_probs.shape[0], mask_probs.shape[-1]
    work = box_math_dtype(mask_probs)
    dtype = torch.uint8 if threshold is not None else work
    out = torch.zeros((d, h, w), dtype=dtype, device=mask_probs.device)
    if d == 0:
        return out
    padded = F.pad(mask_probs.to(work), (1, 1, 1, 1))
    src = m + 2
    ext = _expand_boxes(boxes.to(box_math_dtype(boxes)), src / m).to(torch.int64)  # truncation as torchvision
    widths = (ext[:, 2] - ext[:, 0] + 1).clamp(min=1)
    heights = (ext[:, 3] - ext[:, 1] + 1).clamp(min=1)
    for s in range(0, d, chunk):
        sl = slice(s, s + chunk)
        wy = _axis_weights(ext[sl, 1], heights[sl], h, src, work)  # [r, H, src]
        wx = _axis_weights(ext[sl, 0], widths[sl], w, src, work)  # [r, W, src]
        pasted = wy @ padded[sl] @ wx.transpose(1, 2)  # [r, H, W]
        out[sl] = (pasted >= threshold).to(dtype) if threshold is not None else pasted
    return out
