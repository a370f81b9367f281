"""Selective search proposals (Uijlings et al. 2013) on the CPU, through OpenCV.

Offline only: R-CNN and Fast R-CNN read these boxes as a `proposals` input, they are
never computed inside `forward`. Boxes are XYXY float32 in the input image's pixels,
in OpenCV's ranking order (best first).

Shape shorthand: H, W image height/width; N proposals.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

from detkit.utils.optional import require_opencv

__all__ = ["SS_MODES", "default_min_size", "selective_search", "selective_search_bgr"]

SS_MODES = ("fast", "quality", "single")


@functools.lru_cache(maxsize=1)
def _libc_srand():
    """`srand` of the C library, or None where it cannot be found.

    OpenCV ranks selective-search regions with `level * rand()`, the C library's global
    generator, so the order of the output depends on whatever used `rand()` before.
    Re-seeding it before each call makes the result a function of the image alone.
    """
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name)
        fn = lib.srand
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_uint]
    fn.restype = None
    return fn


def _opencv_contrib():
    """cv2 with the contrib module `ximgproc` (selective search), or a one-line ImportError naming the fix."""
    return require_opencv(
        "selective search", ("ximgproc.segmentation.createSelectiveSearchSegmentation", "resize"), "proposals"
    )


def default_min_size(height: int, width: int) -> float:
    """Smallest box side kept by default: 1% of the shorter image side, at least 4 px."""
    return max(4.0, 0.01 * min(height, width))


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {tuple(image.shape)}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image is too small for selective search: {tuple(image.shape)}")


def _check_args(mode, max_proposals, min_size, resize_to) -> None:
    if mode not in SS_MODES:
        raise ValueError(f"mode must be one of {SS_MODES}, got {mode!r}")
    if max_proposals is not None and (not isinstance(max_proposals, int) or max_proposals < 1):
        raise ValueError(f"max_proposals must be a positive int or None, got {max_proposals!r}")
    if min_size is not None and not min_size >= 0:
        raise ValueError(f"min_size must be >= 0 or None, got {min_size!r}")
    if resize_to is not None and (not isinstance(resize_to, int) or resize_to < 2):
        raise ValueError(f"resize_to must be an int >= 2 or None, got {resize_to!r}")


def selective_search_bgr(
    image_bgr: np.ndarray,
    mode: str = "fast",
    max_proposals: int | None = 2000,
    min_size: float | None = None,
    resize_to: int | None = None,
    seed: int | None = 0,
) -> np.ndarray:
    """Same as :func:`selective_search` for a BGR image (what `cv2.imread` returns)."""
    cv2 = _opencv_contrib()
    _check_image(image_bgr)
    _check_args(mode, max_proposals, min_size, resize_to)
    height, width = image_bgr.shape[:2]

    scale = 1.0
    work = image_bgr
    if resize_to is not None and min(height, width) > resize_to:
        scale = resize_to / min(height, width)
        size = (max(2, round(width * scale)), max(2, round(height * scale)))
        work = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
    work = np.ascontiguousarray(work)

    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(work)
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    elif mode == "quality":
        ss.switchToSelectiveSearchQuality()
    else:
        ss.switchToSingleStrategy()
    if seed is not None and (srand := _libc_srand()) is not None:
        srand(seed & 0xFFFFFFFF)
    rects = ss.process()  # int32 [N, 4] XYWH, ranked

    if rects is None or len(rects) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    boxes = np.empty_like(rects)
    boxes[:, :2] = rects[:, :2]
    boxes[:, 2:] = rects[:, :2] + rects[:, 2:]
    if scale != 1.0:
        sx = width / work.shape[1]
        sy = height / work.shape[0]
        boxes *= np.array([sx, sy, sx, sy])
    boxes = np.round(boxes)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)

    if min_size is None:
        min_size = default_min_size(height, width)
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    boxes = boxes[side >= max(min_size, 1.0)]

    # exact duplicates (after rounding): keep the first-ranked copy, preserve the order
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    if max_proposals is not None:
        boxes = boxes[:max_proposals]
    return np.ascontiguousarray(boxes, dtype=np.float32)


def selective_search(
    image: np.ndarray,
    mode: str = "fast",
    max_proposals: int | None = 2000,
    min_size: float | None = None,
    resize_to: int | None = None,
    seed: int | None = 0,
) -> np.ndarray:
    """Selective-search proposals for one image.

    Args:
        image: `uint8[H, W, 3]` RGB image.
        mode: "fast" (Uijlings' fast setting, R-CNN's choice), "quality" (more boxes,
            about 4x slower) or "single" (one strategy, fastest, lowest recall).
        max_proposals: keep at most this many top-ranked boxes (None: keep all).
        min_size: drop boxes whose width or height is below this (pixels of the input
            image); None uses :func:`default_min_size` (1% of the shorter side, >= 4 px).
        resize_to: if given and the image's shorter side is longer, run the search on a
            copy whose shorter side is `resize_to` and scale the boxes back. Main speed
            lever: cost grows with the pixel count.
        seed: re-seeds the C library's `rand()` that OpenCV uses to rank regions, so
            the same image always gives the same boxes in the same order (best effort:
            needs a findable C library; concurrent calls in threads of one process
            share the generator). None leaves it alone.

    Returns:
        `float32[N, 4]` XYXY boxes in the input image's pixels, ranked, with boxes
        clipped to the image, exact duplicates (after rounding to whole pixels) and
        tiny boxes removed.
    """
    _check_image(image)
    return selective_search_bgr(
        np.ascontiguousarray(image[:, :, ::-1]),
        mode=mode,
        max_proposals=max_proposals,
        min_size=min_size,
        resize_to=resize_to,
        seed=seed,
    )
