"""Image normalisation, resizing and batching inside the detector, and the way back.

Shape shorthand: N images, C = 3 channels, H x W one image, Hp x Wp the padded batch.

Inputs are float 0..1 RGB tensors Tensor[3, H, W] of any size. Each image is resized so
its shorter side is `min_size` (its longer side at most `max_size`), normalised with the
ImageNet mean/std and zero-padded bottom/right to a multiple of `size_divisible`.
Detections are mapped back to the original pixels with `resize_boxes` (detkit.structures.packed).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.structures import ImageBatch, pad_images
from detkit.utils.eager import eager_mode

__all__ = ["DetectionTransform", "resized_size", "validate_images"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# accepted input values: 0..1 with room for augmentation overshoot; far outside is refused
IMAGE_RANGE = (-1.0, 2.0)
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def resized_size(height: int, width: int, min_size: int | None, max_size: int | None) -> tuple[int, int]:
    """Size after scaling the shorter side to `min_size` with the longer side capped at `max_size`.

    Uses the same arithmetic as torchvision's detection transform (floor of size * scale) so
    that checkpoints trained there see identical inputs.
    """
    if min_size is None:
        return height, width
    scale = min_size / min(height, width)
    if max_size is not None:
        scale = min(scale, max_size / max(height, width))
    return int(math.floor(height * scale)), int(math.floor(width * scale))


def validate_images(images: Sequence[Tensor]) -> None:
    """Raise ValueError unless `images` is a non-empty list of float Tensor[3, H, W]."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(
                f"images must be a list of Tensor[3, H, W] or a Tensor[N, 3, H, W], got shape {tuple(images.shape)}"
            )
        images = list(images)
    if len(images) == 0:
        raise ValueError("images is empty: expected at least one Tensor[3, H, W]")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor):
            raise ValueError(f"images[{i}] must be a Tensor[3, H, W], got {type(img).__name__}")
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"images[{i}] must have shape [3, H, W] (RGB, channels first), got {tuple(img.shape)}")
        if not img.is_floating_point():
            raise ValueError(f"images[{i}] must be a float tensor with values in 0..1, got dtype {img.dtype}")
        if img.shape[1] < 1 or img.shape[2] < 1:
            raise ValueError(f"images[{i}] has an empty spatial size {tuple(img.shape)}")
    # values far outside 0..1 (e.g. 0..255 images) would silently give no detections; one sync
    ranges = torch.stack([torch.stack(torch.aminmax(img.detach())).float() for img in images]).cpu()
    for i, (low, high) in enumerate(ranges.tolist()):
        if not (low >= IMAGE_RANGE[0] and high <= IMAGE_RANGE[1]):
            raise ValueError(
                f"images[{i}] has values in [{low:g}, {high:g}]: detkit takes float RGB images with values "
                "in 0..1 (divide 0..255 images by 255)"
            )


class DetectionTransform(nn.Module):
    """Resize, normalise and pad a list of images into an `ImageBatch`.

    `min_size` may be a list of sizes (multi-scale training): in training mode each image
    draws one (torch's global RNG), in evaluation mode the largest is used.

    `memory_format` is the batch's layout, which every convolution after it keeps:
    "channels_last" (NHWC), "contiguous" (NCHW) or "auto", channels-last on the CPU and NCHW on
    other devices. On the CPU (oneDNN) channels-last convolutions are faster: a ResNet-50-FPN
    predict by ~10% at 320x320 and ~30% at 800x1216, a training step by ~30% at 320x320
    (benchmarks/bench_infer.py, bench_train.py). On GPUs
    it was not measured here, so "auto" leaves them NCHW. "auto" also stays NCHW while tracing,
    exporting or compiling, and with `cpu_kernels=False` (read at each call: the layout CUDA
    gets, on a CPU). Values are the same up to float rounding (oneDNN picks other kernels for NHWC).
    """

    def __init__(
        self,
        *,
        min_size: int | Sequence[int] | None = 800,
        max_size: int | None = 1333,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        size_divisible: int = 32,
        memory_format: str = "auto",
        cpu_kernels: bool = True,
    ):
        super().__init__()
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
        self.min_size, self.max_size, self.size_divisible = min_size, max_size, size_divisible
        self.memory_format, self.cpu_kernels = memory_format, cpu_kernels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Sequence[Tensor]) -> ImageBatch:
        validate_images(images)
        images = [img.to(self.mean.dtype) for img in images]  # float64 / half inputs: compute in float32
        original = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        sizes = self._min_sizes(len(images))
        target = [resized_size(h, w, m, self.max_size) for (h, w), m in zip(original, sizes)]
        mean, std = self.mean.to(images[0].device), self.std.to(images[0].device)
        if len(set(original)) == 1 and len(set(target)) == 1:  # one size: the whole batch at once
            batch = (torch.stack(images) - mean) / std
            if target[0] != original[0]:
                batch = F.interpolate(batch, size=target[0], mode="bilinear", align_corners=False)
            resized = list(batch)
        else:
            resized = []
            for img, size, orig in zip(images, target, original):
                img = (img[None] - mean) / std
                if size != orig:
                    img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
                resized.append(img[0])
        tensor = pad_images(resized, size_divisible=self.size_divisible)
        if self._channels_last(tensor):
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        device = tensor.device
        sizes = torch.tensor([target, original], dtype=torch.int64, device=device)  # one upload
        return ImageBatch(tensor=tensor, image_sizes=sizes[0], original_sizes=sizes[1])

    def _channels_last(self, tensor: Tensor) -> bool:
        """Whether the batch `tensor` becomes channels-last: the one place that picks the layout."""
        if self.memory_format == "auto":
            return tensor.device.type == "cpu" and eager_mode() and self.cpu_kernels
        return self.memory_format == "channels_last"

    def _min_sizes(self, n: int) -> list[int | None]:
        """The shorter-side size of each of `n` images (multi-scale: drawn in training, the largest in eval)."""
        if self.min_size is None or isinstance(self.min_size, int):
            return [self.min_size] * n
        choices = [int(v) for v in self.min_size]
        if not self.training:
            return [max(choices)] * n
        return [choices[i] for i in torch.randint(len(choices), (n,)).tolist()]
