"""Drawing detections and small line plots with OpenCV (no matplotlib).

Shape shorthand: D detections, H x W image size, P keypoints per detection.
Images are RGB: `np.ndarray[H, W, 3]` uint8, or a float 0..1 `Tensor[3, H, W]` (converted).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from detkit.utils.io import atomic_write
from detkit.utils.optional import require_opencv

cv2 = require_opencv("drawing", ("FONT_HERSHEY_SIMPLEX", "putText", "rectangle", "imencode"))

__all__ = ["class_colour", "draw_detections", "plot_curves", "save_png", "to_uint8_rgb"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN = 0.618033988749895


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour for `label` (golden-ratio hue steps)."""
    hue = int(((label * _GOLDEN) % 1.0) * 180)
    hsv = np.array([[[hue, 200, 240]]], dtype=np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def to_uint8_rgb(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """`Tensor[3, H, W]` float 0..1 (or uint8), or `np.ndarray[H, W, 3]` -> contiguous uint8 `[H, W, 3]`."""
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu")
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image Tensor[3, H, W], got shape {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.permute(1, 2, 0).numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _as_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu").float() if dtype is np.float32 else x.detach().to("cpu")
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def draw_detections(
    image: np.ndarray | torch.Tensor,
    boxes,
    labels,
    scores=None,
    masks=None,
    *,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
    mask_alpha: float = 0.45,
    min_side: int = 512,
    keypoints=None,
    skeleton: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Draw boxes, class names, scores, (alpha-blended) masks and keypoints on a copy of `image`.

    Args:
        image: RGB image (see module docstring).
        boxes: `[D, 4]` XYXY pixels of `image`.
        labels: `[D]` labels, 1..num_classes.
        scores: `[D]` scores, or None (ground truth).
        masks: `[D, H, W]` binary masks, or None.
        class_names: name of label `k` is `class_names[k - 1]`; otherwise the number.
        score_threshold: detections with a lower score are not drawn.
        mask_alpha: mask opacity.
        min_side: images whose longer side is below this are enlarged by an integer factor
            first (so text on 128-px images stays legible); 0 disables.
        keypoints: `[D, P, 3]` (x, y, v) pixels of `image`, or None: points with v > 0 are drawn
            as dots (white rim) in the detection's colour.
        skeleton: 0-based keypoint index pairs joined by lines where both ends have v > 0.

    Returns:
        `np.ndarray[H', W', 3]` uint8 RGB.
    """
    canvas = to_uint8_rgb(image).copy()
    boxes = _as_numpy(boxes, np.float32).reshape(-1, 4)
    labels = _as_numpy(labels, np.int64).reshape(-1)
    scores = None if scores is None else _as_numpy(scores, np.float32).reshape(-1)
    if masks is not None:
        masks = _as_numpy(masks, np.uint8)
    if keypoints is not None:
        keypoints = _as_numpy(keypoints, np.float32)
        if keypoints.ndim != 3 or keypoints.shape[0] != len(boxes) or keypoints.shape[2] != 3:
            raise ValueError(f"keypoints must be [D, P, 3] for {len(boxes)} boxes, got shape {keypoints.shape}")
    keep = np.ones(len(boxes), dtype=bool) if scores is None else scores >= score_threshold
    order = np.flatnonzero(keep)
    if scores is not None:
        order = order[np.argsort(scores[order], kind="stable")]  # strongest drawn last (on top)

    if masks is not None and len(order):
        overlay = canvas.astype(np.float32)
        for i in order:
            m = masks[i].astype(bool)
            if m.shape != canvas.shape[:2]:
                raise ValueError(f"mask shape {m.shape} differs from the image size {canvas.shape[:2]}")
            overlay[m] = (
                overlay[m] * (1 - mask_alpha) + np.asarray(class_colour(int(labels[i])), np.float32) * mask_alpha
            )
        canvas = np.clip(np.rint(overlay), 0, 255).astype(np.uint8)

    factor = 1
    longest = max(canvas.shape[:2])
    if min_side and 0 < longest < min_side:
        factor = math.ceil(min_side / longest)
        canvas = cv2.resize(canvas, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    font_scale = max(0.4, max(canvas.shape[:2]) / 1200)
    for i in order:
        colour = class_colour(int(labels[i]))
        x1, y1, x2, y2 = (int(round(v * factor)) for v in boxes[i])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, lineType=cv2.LINE_8)
        label = int(labels[i])
        name = class_names[label - 1] if class_names is not None and 1 <= label <= len(class_names) else str(label)
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
        (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        cv2.rectangle(canvas, (x1, ty - th - base), (x1 + tw + 2, ty + 1), colour, -1)
        cv2.putText(canvas, text, (x1 + 1, ty - base + 1), _FONT, font_scale, (0, 0, 0), 1, lineType=cv2.LINE_AA)
    if keypoints is not None:
        for i in order:
            _draw_keypoints(canvas, keypoints[i], skeleton or (), class_colour(int(labels[i])), factor, thickness)
    return canvas


def _draw_keypoints(
    canvas: np.ndarray, points: np.ndarray, skeleton: Sequence[tuple[int, int]], colour, factor: int, thickness: int
) -> None:
    """One detection's `[P, 3]` keypoints and skeleton lines, in place."""
    xy = np.rint(points[:, :2] * factor).astype(np.int64)
    shown = points[:, 2] > 0
    for a, b in skeleton:
        if 0 <= a < len(points) and 0 <= b < len(points) and shown[a] and shown[b]:
            pa, pb = (int(xy[a, 0]), int(xy[a, 1])), (int(xy[b, 0]), int(xy[b, 1]))
            cv2.line(canvas, pa, pb, colour, thickness, lineType=cv2.LINE_8)
    radius = max(2, 2 * thickness)
    for (x, y), on in zip(xy.tolist(), shown.tolist()):
        if on:
            cv2.circle(canvas, (x, y), radius + 1, (255, 255, 255), -1, lineType=cv2.LINE_8)
            cv2.circle(canvas, (x, y), radius, colour, -1, lineType=cv2.LINE_8)


def save_png(path: str | os.PathLike, image_rgb: np.ndarray) -> None:
    """Encode an RGB uint8 image as PNG and write it atomically (temp file + os.replace)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(to_uint8_rgb(image_rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode PNG for {os.fspath(path)}")
    atomic_write(path, buf.tobytes(), fsync=False)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + k * step for k in range(int((hi - start) / step + 1e-9) + 1)]


def plot_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike | None = None,
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    size: tuple[int, int] = (900, 560),
    log_y: bool = False,
) -> np.ndarray:
    """Line plot of named `(xs, ys)` series; returns the RGB image and saves a PNG when `path` is given.

    Non-finite points are skipped. With `log_y` the y axis is log10 (non-positive values skipped).
    """
    width, height = size
    left, right, top, bottom = 70, width - 170, 40, height - 50
    img = np.full((height, width, 3), 255, np.uint8)
    clean = {}
    for name, (xs, ys) in series.items():
        xs, ys = np.asarray(xs, np.float64).reshape(-1), np.asarray(ys, np.float64).reshape(-1)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if log_y:
            ok &= ys > 0
        xs, ys = xs[ok], ys[ok]
        if log_y:
            ys = np.log10(ys)
        if len(xs):
            clean[name] = (xs, ys)
    if clean:
        x_lo = min(xs.min() for xs, _ in clean.values())
        x_hi = max(xs.max() for xs, _ in clean.values())
        y_lo = min(ys.min() for _, ys in clean.values())
        y_hi = max(ys.max() for _, ys in clean.values())
    else:
        x_lo, x_hi, y_lo, y_hi = 0.0, 1.0, 0.0, 1.0
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    if y_hi <= y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = 0.05 * (y_hi - y_lo)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def px(x, y):
        u = left + (np.asarray(x) - x_lo) / (x_hi - x_lo) * (right - left)
        v = bottom - (np.asarray(y) - y_lo) / (y_hi - y_lo) * (bottom - top)
        return np.stack([u, v], axis=-1).round().astype(np.int32)

    grey, black = (225, 225, 225), (0, 0, 0)
    for t in _nice_ticks(x_lo, x_hi):
        ((u, _),) = px([t], [y_lo])
        cv2.line(img, (int(u), top), (int(u), bottom), grey, 1)
        cv2.putText(img, f"{t:g}", (int(u) - 15, bottom + 18), _FONT, 0.4, black, 1, cv2.LINE_AA)
    if log_y:  # 1-2-5 steps in data units
        decades = range(math.floor(y_lo) - 1, math.ceil(y_hi) + 1)
        y_ticks = [math.log10(m * 10.0**k) for k in decades for m in (1, 2, 5)]
        y_ticks = [t for t in y_ticks if y_lo <= t <= y_hi]
    else:
        y_ticks = _nice_ticks(y_lo, y_hi)
    for t in y_ticks:
        ((_, v),) = px([x_lo], [t])
        cv2.line(img, (left, int(v)), (right, int(v)), grey, 1)
        text = f"{10**t:.3g}" if log_y else f"{t:.3g}"
        cv2.putText(img, text, (5, int(v) + 4), _FONT, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (right, bottom), black, 1)
    for k, (name, (xs, ys)) in enumerate(clean.items()):
        colour = class_colour(k + 1)[::-1]  # RGB -> BGR for drawing on the BGR canvas
        pts = px(xs, ys)
        if len(pts) == 1:
            cv2.circle(img, tuple(int(c) for c in pts[0]), 3, colour, -1, cv2.LINE_AA)
        else:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        ly = top + 10 + 20 * k
        cv2.line(img, (right + 10, ly), (right + 35, ly), colour, 2)
        cv2.putText(img, name[:18], (right + 40, ly + 4), _FONT, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(img, title, (left, 25), _FONT, 0.6, black, 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, ((left + right) // 2 - 20, height - 12), _FONT, 0.45, black, 1, cv2.LINE_AA)
    if ylabel:
        cv2.putText(img, ylabel + (" (log)" if log_y else ""), (5, top - 10), _FONT, 0.4, black, 1, cv2.LINE_AA)
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if path is not None:
        save_png(path, rgb)
    return rgb
