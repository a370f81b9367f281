"""Precision-recall curves from a COCO precision array, drawn with OpenCV.

Shape shorthand: T IoU thresholds, R recall thresholds, K categories, A area ranges,
M max-detection settings (the layout of `COCOeval.eval["precision"]`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from detkit.utils.io import atomic_write
from detkit.utils.optional import require_opencv

cv2 = require_opencv("precision-recall curves", ("FONT_HERSHEY_SIMPLEX", "putText", "rotate", "imencode"))

__all__ = ["plot_pr_curves"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WIDTH, _HEIGHT = 1000, 700
_LEFT, _RIGHT, _TOP, _BOTTOM = 80, 720, 50, 630  # plot area in pixels
_LEGEND_X, _LINE_H = 740, 18


def _palette(n: int) -> list[tuple[int, int, int]]:
    """`n` distinct BGR colours (evenly spaced hues)."""
    hues = (np.arange(n) * 180 // max(n, 1)).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 220, np.uint8), np.full(n, 210, np.uint8)], axis=1)[None]
    bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]
    return [tuple(int(c) for c in color) for color in bgr]


def _ascii(text: str, limit: int = 22) -> str:
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 2] + ".."


def _to_pixels(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    x = _LEFT + recall * (_RIGHT - _LEFT)
    y = _BOTTOM - np.clip(precision, 0.0, 1.0) * (_BOTTOM - _TOP)
    return np.round(np.stack([x, y], axis=1)).astype(np.int32)


def _draw_axes(img: np.ndarray, title: str) -> None:
    for i in range(6):
        frac = i / 5
        x = round(_LEFT + frac * (_RIGHT - _LEFT))
        y = round(_BOTTOM - frac * (_BOTTOM - _TOP))
        cv2.line(img, (x, _TOP), (x, _BOTTOM), (225, 225, 225), 1)
        cv2.line(img, (_LEFT, y), (_RIGHT, y), (225, 225, 225), 1)
        cv2.line(img, (x, _BOTTOM), (x, _BOTTOM + 6), (0, 0, 0), 1)
        cv2.line(img, (_LEFT - 6, y), (_LEFT, y), (0, 0, 0), 1)
        cv2.putText(
            img,
            f"{frac:.1f}",
            (x - 12, _BOTTOM + 22),
            _FONT,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        cv2.putText(
            img,
            f"{frac:.1f}",
            (_LEFT - 38, y + 5),
            _FONT,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    cv2.rectangle(img, (_LEFT, _TOP), (_RIGHT, _BOTTOM), (0, 0, 0), 1)
    cv2.putText(
        img,
        "Recall",
        ((_LEFT + _RIGHT) // 2 - 25, _BOTTOM + 50),
        _FONT,
        0.6,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    label = np.full((24, 90, 3), 255, np.uint8)
    cv2.putText(label, "Precision", (2, 18), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)  # [90, 24]
    y0 = (_TOP + _BOTTOM) // 2 - 45
    img[y0 : y0 + 90, 8:32] = label
    cv2.putText(
        img,
        _ascii(title, 80),
        (_LEFT, _TOP - 18),
        _FONT,
        0.65,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )


def plot_pr_curves(
    precision: np.ndarray,
    category_names: Sequence[str],
    path: str | os.PathLike,
    *,
    iou_index: int = 0,
    area_index: int = 0,
    max_dets_index: int = -1,
    iou_thresholds: Sequence[float] | None = None,
) -> None:
    """Write a PNG with one precision-recall curve per category plus their mean.

    Args:
        precision: `Tensor[T, R, K, A, M]` array from COCOeval (-1 where undefined).
        category_names: K names, in the array's category order.
        path: PNG path (written atomically).
        iou_index: IoU threshold index (0 = IoU 0.50 for the standard thresholds).
        area_index / max_dets_index: area range (0 = all) and max-detection setting.
        iou_thresholds: the T thresholds, for the title (default 0.50:0.05:0.95).
    """
    precision = np.asarray(precision, dtype=np.float64)
    if precision.ndim != 5:
        raise ValueError(f"precision must have shape [T, R, K, A, M], got {precision.shape}")
    num_classes = precision.shape[2]
    if len(category_names) != num_classes:
        raise ValueError(f"{len(category_names)} category names for {num_classes} categories")
    if iou_thresholds is None:
        iou_thresholds = np.linspace(0.5, 0.95, precision.shape[0])
    curves = precision[iou_index, :, :, area_index, max_dets_index].T  # [K, R]
    recall = np.linspace(0.0, 1.0, curves.shape[1])
    valid = (curves > -1).all(axis=1)  # categories without ground truth are all -1

    img = np.full((_HEIGHT, _WIDTH, 3), 255, np.uint8)
    _draw_axes(img, f"Precision-recall @ IoU={float(iou_thresholds[iou_index]):.2f}")
    colors = _palette(num_classes)
    aps = curves.mean(axis=1)
    order = [k for k in np.argsort(-aps, kind="stable") if valid[k]]
    for k in order[::-1]:  # best class drawn last (on top)
        cv2.polylines(img, [_to_pixels(recall, curves[k])], False, colors[k], 1, cv2.LINE_AA)

    legend = []
    if order:
        mean_curve = curves[valid].mean(axis=0)
        cv2.polylines(img, [_to_pixels(recall, mean_curve)], False, (0, 0, 0), 3, cv2.LINE_AA)
        legend.append((f"mean AP={mean_curve.mean():.3f}", (0, 0, 0)))
    else:
        cv2.putText(
            img,
            "no ground truth",
            (_LEFT + 20, _TOP + 30),
            _FONT,
            0.6,
            (0, 0, 255),
            1,
            cv2.LINE_AA,
        )
    legend += [(f"{_ascii(category_names[k])} {aps[k]:.3f}", colors[k]) for k in order]
    max_lines = (_HEIGHT - _TOP - 10) // _LINE_H
    if len(legend) > max_lines:
        legend = legend[: max_lines - 1] + [(f"+{len(legend) - max_lines + 1} more", (90, 90, 90))]
    for i, (text, color) in enumerate(legend):
        y = _TOP + i * _LINE_H
        cv2.line(img, (_LEGEND_X, y - 4), (_LEGEND_X + 22, y - 4), color, 3)
        cv2.putText(img, text, (_LEGEND_X + 30, y), _FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)

    ok, encoded = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("OpenCV could not encode the PNG")
    atomic_write(path, encoded.tobytes(), fsync=False)
