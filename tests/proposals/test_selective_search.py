import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detkit.proposals import selective_search
from detkit.proposals.selective_search import (
    _libc_srand,
    default_min_size,
    selective_search_bgr,
)

H, W = 96, 128
RECT = (30, 20, 100, 76)  # XYXY of the big rectangle


def scene(seed=0):
    """Green noisy background, one big red rectangle, a few small blobs."""
    rng = np.random.default_rng(seed)
    img = np.empty((H, W, 3), np.uint8)
    img[:] = (30, 140, 40)
    img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    x1, y1, x2, y2 = RECT
    img[y1:y2, x1:x2] = (230, 30, 30)
    for _ in range(4):
        x, y = rng.integers(0, W - 12), rng.integers(0, H - 12)
        img[y : y + 10, x : x + 10] = rng.integers(0, 256, 3)
    return img


def max_iou(boxes, target):
    return box_iou(torch.tensor([target], dtype=torch.float32), torch.from_numpy(boxes)).max().item()


@pytest.mark.parametrize("mode", ["fast", "quality", "single"])
def test_boxes_valid_and_big_rectangle_recalled(mode):
    boxes = selective_search(scene(), mode=mode)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert len(boxes) > 0
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
    assert max_iou(boxes, RECT) > 0.7


def test_no_duplicates_and_tiny_boxes_removed():
    boxes = selective_search(scene(), mode="quality", max_proposals=None)
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert side.min() >= default_min_size(H, W)
    big = selective_search(scene(), mode="quality", max_proposals=None, min_size=30)
    big_side = np.minimum(big[:, 2] - big[:, 0], big[:, 3] - big[:, 1])
    assert big_side.min() >= 30 and 0 < len(big) < len(boxes)


def test_truncation_keeps_the_ranking():
    full = selective_search(scene(), mode="quality", max_proposals=None)
    assert len(full) > 5
    top = selective_search(scene(), mode="quality", max_proposals=5)
    np.testing.assert_array_equal(top, full[:5])


@pytest.mark.skipif(_libc_srand() is None, reason="C library srand not reachable")
def test_seeded_runs_are_reproducible():
    a = selective_search(scene(1), mode="quality")
    b = selective_search(scene(1), mode="quality")
    np.testing.assert_array_equal(a, b)


def test_rgb_input_is_converted_to_bgr():
    img = scene(2)
    np.testing.assert_array_equal(selective_search(img), selective_search_bgr(img[:, :, ::-1].copy()))


def test_resize_to_returns_boxes_in_original_pixels():
    img = np.repeat(np.repeat(scene(), 2, axis=0), 2, axis=1)  # 192 x 256
    boxes = selective_search(img, resize_to=96)
    assert (boxes[:, 2] <= 2 * W).all() and (boxes[:, 3] <= 2 * H).all()
    assert boxes[:, 2].max() > W  # not left in the small image's coordinates
    assert max_iou(boxes, tuple(2 * v for v in RECT)) > 0.7
    # no upscaling: resize_to above the shorter side is a no-op
    np.testing.assert_array_equal(selective_search(scene(), resize_to=500), selective_search(scene()))


@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (np.zeros((H, W, 3), np.float32), {}, "uint8"),
        (np.zeros((H, W), np.uint8), {}, r"\(H, W, 3\)"),
        (np.zeros((H, W, 4), np.uint8), {}, r"\(H, W, 3\)"),
        (np.zeros((H, W, 3), np.uint8), {"mode": "slow"}, "mode"),
        (np.zeros((H, W, 3), np.uint8), {"max_proposals": 0}, "max_proposals"),
        (np.zeros((H, W, 3), np.uint8), {"resize_to": 1}, "resize_to"),
    ],
)
def test_invalid_input_raises(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        selective_search(image, **kwargs)


def test_non_array_input_raises_type_error():
    with pytest.raises(TypeError, match="numpy array"):
        selective_search([[0, 0, 0]])


class FakeSS:
    """Stands in for OpenCV's segmentation object and returns fixed XYWH rects."""

    rects = None
    base_shape = None

    def setBaseImage(self, img):
        FakeSS.base_shape = img.shape

    def switchToSelectiveSearchFast(self):
        pass

    def process(self):
        return np.array(FakeSS.rects, dtype=np.int32)


@pytest.fixture
def fake_ss(monkeypatch):
    import cv2

    monkeypatch.setattr(cv2.ximgproc.segmentation, "createSelectiveSearchSegmentation", FakeSS)
    return FakeSS


def test_postprocessing_on_known_rects(fake_ss):
    fake_ss.rects = [
        [10, 10, 20, 20],
        [0, 0, W, H],
        [10, 10, 20, 20],  # duplicate
        [5, 5, 2, 30],  # 2 px wide: below default_min_size = 4
        [40, 40, 30, 10],
        [0, 0, W, H],  # duplicate
        [120, 90, 20, 20],  # sticks out: clipped to the image
    ]
    boxes = selective_search(np.zeros((H, W, 3), np.uint8), max_proposals=None)
    expected = [[10, 10, 30, 30], [0, 0, W, H], [40, 40, 70, 50], [120, 90, W, H]]
    np.testing.assert_array_equal(boxes, np.array(expected, np.float32))
    top2 = selective_search(np.zeros((H, W, 3), np.uint8), max_proposals=2)
    np.testing.assert_array_equal(top2, np.array(expected[:2], np.float32))


def test_resize_scales_boxes_back(fake_ss):
    fake_ss.rects = [[5, 5, 10, 10], [0, 0, 64, 48]]
    boxes = selective_search(np.zeros((H, W, 3), np.uint8), resize_to=48)
    assert fake_ss.base_shape == (48, 64, 3)
    np.testing.assert_array_equal(boxes, np.array([[10, 10, 30, 30], [0, 0, W, H]], np.float32))
