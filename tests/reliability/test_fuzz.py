"""Property-based fuzzing (hypothesis) of the COCO loader and the box operations.

Allowed failures are the documented ones: ValueError (AnnotationFormatError) for bad
annotation files, ImageReadError for unreadable images, and RuntimeError("no readable image
left") when skip_invalid runs out of images. Outputs must be well-formed and NaN-free.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from detkit.data import CocoDetection, ImageReadError
from detkit.matching import BoxCoder
from detkit.structures import (
    PackedTargets,
    batched_box_iou,
    box_area,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    remove_small_boxes,
    validate_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)

H, W = 20, 30
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------ COCO json
MISSING = object()


def _pick(draw, good, *bad, p_bad=0.15):
    """Mostly `good`; with probability p_bad one of `bad` (or the key left out)."""
    if draw(st.floats(0, 1)) >= p_bad:
        return draw(good)
    return draw(st.one_of(*bad, st.just(MISSING)))


_number = st.one_of(
    st.integers(-40, 60),
    st.floats(-40, 60, allow_nan=False),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e12, -1e12]),
)
_junk = st.sampled_from([None, "7", True, [1], {"a": 1}])


def _rle(draw):
    kind = draw(st.sampled_from(["valid", "other_size_counts", "random_string", "uncompressed", "bad_size"]))
    if kind == "random_string":
        counts = draw(st.text(alphabet=[chr(c) for c in range(48, 112)], min_size=0, max_size=12))
        return {"size": [H, W], "counts": counts}
    h, w = (10, 10) if kind == "other_size_counts" else (H, W)
    bits = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    m = np.asfortranarray(np.array(bits, dtype=np.uint8).reshape(h, w))
    if kind == "uncompressed":
        flat, runs, cur, n = m.flatten(order="F"), [], 0, 0
        for v in flat:
            if v == cur:
                n += 1
            else:
                runs.append(n)
                cur, n = v, 1
        runs.append(n)
        if draw(st.booleans()):
            runs[-1] += draw(st.integers(-3, 3))
        return {"size": [H, W], "counts": runs}
    counts = mask_utils.encode(m)["counts"].decode("ascii")
    size = [H + 1, W] if kind == "bad_size" else [H, W]
    return {"size": size, "counts": counts}


@st.composite
def _segmentation(draw):
    kind = draw(st.sampled_from(["polygons", "polygons", "rle", "junk"]))
    if kind == "polygons":
        coord = st.one_of(st.integers(-50, 100), st.floats(-50, 100, allow_nan=False))
        polygon = st.lists(coord, min_size=0, max_size=10)
        return draw(st.lists(polygon, min_size=0, max_size=3))
    if kind == "rle":
        return _rle(draw)
    return draw(st.one_of(_junk, st.just([[1, 2, "x", 4, 5, 6]])))


@st.composite
def _annotation(draw, aid, n_images):
    ann = {
        "id": _pick(draw, st.just(aid), st.integers(1, 2), p_bad=0.05),
        "image_id": _pick(draw, st.integers(1, max(1, n_images) + 1), _junk),
        "category_id": _pick(draw, st.sampled_from([1, 2]), st.just(7), _junk),
        "bbox": _pick(draw, st.lists(_number, min_size=4, max_size=4), st.lists(_number, max_size=5), _junk),
        "iscrowd": _pick(draw, st.sampled_from([0, 0, 1])),
        "segmentation": _pick(draw, _segmentation(), p_bad=0.1),
        "area": _pick(draw, _number, p_bad=0.5),
    }
    return {k: v for k, v in ann.items() if v is not MISSING}


_file_names = st.sampled_from(["a.png", "a.png", "gray.png", "missing.png", "bad.png", "../a.png", "/etc/hostname", ""])


@st.composite
def _image(draw, iid):
    img = {
        "id": _pick(draw, st.just(iid), st.integers(1, 2), _junk, p_bad=0.05),
        "file_name": _pick(draw, _file_names, _junk, p_bad=0.05),
        "width": _pick(draw, st.just(W), st.sampled_from([0, -3, 31]), _junk, p_bad=0.05),
        "height": _pick(draw, st.just(H), st.sampled_from([0, 21]), _junk, p_bad=0.05),
    }
    return {k: v for k, v in img.items() if v is not MISSING}


@st.composite
def coco_files(draw):
    n_images = draw(st.integers(0, 4))
    n_anns = draw(st.integers(0, 6))
    categories = _pick(
        draw,
        st.just([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]),
        st.just([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]),
        st.just([{"id": "1", "name": "a"}]),
        p_bad=0.05,
    )
    data = {
        "images": [draw(_image(i + 1)) for i in range(n_images)],
        "annotations": [draw(_annotation(i + 1, n_images)) for i in range(n_anns)],
        "categories": categories,
    }
    return {k: v for k, v in data.items() if v is not MISSING}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_images")
    cv2.imwrite(str(root / "a.png"), np.full((H, W, 3), 120, np.uint8))
    cv2.imwrite(str(root / "gray.png"), np.full((H, W), 200, np.uint8))
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def _check_item(ds, index, skip_invalid=False):
    item = ds[index]
    if item is None:  # an unreadable image is skipped (and counted), never replaced by another
        assert skip_invalid
        return
    image, target = item
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    boxes, labels = target["boxes"], target["labels"]
    assert boxes.dtype == torch.float32 and boxes.shape == (len(labels), 4)
    assert torch.isfinite(boxes).all()
    if len(boxes):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert labels.min() >= 1 and labels.max() <= ds.num_classes
    if ds.with_masks:
        masks = target["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(labels), H, W)
        assert set(masks.unique().tolist()) <= {0, 1}, "mask values outside {0, 1}"


@SETTINGS
@given(data=coco_files(), with_masks=st.booleans(), skip_invalid=st.booleans())
def test_coco_loader_fuzz(image_root, data, with_masks, skip_invalid):
    ann_file = image_root / "ann.json"
    ann_file.write_text(json.dumps(data))  # NaN / Infinity are written as JSON extensions
    try:
        ds = CocoDetection(image_root, ann_file, with_masks=with_masks, skip_invalid=skip_invalid)
    except ValueError:
        return
    for index in range(len(ds)):
        try:
            _check_item(ds, index, skip_invalid)
        except ImageReadError:
            assert not skip_invalid
        except RuntimeError as e:
            assert skip_invalid and "no readable image left" in str(e)


# ------------------------------------------------------------------------------ box ops
_coord = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@st.composite
def boxes(draw, *, valid=False, max_n=6):
    n = draw(st.integers(0, max_n))
    rows = []
    for _ in range(n):
        x1, y1, a, b = (draw(_coord) for _ in range(4))
        if valid:  # x2 >= x1, y2 >= y1 (zero size allowed)
            a, b = (
                x1 + abs(a) * draw(st.sampled_from([0.0, 1e-3, 1.0])),
                y1 + abs(b) * draw(st.sampled_from([0.0, 1.0])),
            )
        rows.append([x1, y1, a, b])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def _tol(*tensors):
    scale = max([1.0] + [float(t.abs().max()) for t in tensors if t.numel()])
    return 4 * scale * torch.finfo(torch.float32).eps


@SETTINGS
@given(b=boxes())
def test_box_conversions_round_trip(b):
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(b)), b, atol=_tol(b), rtol=0)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b, atol=2 * _tol(b), rtol=0)
    for out in (xyxy_to_xywh(b), xyxy_to_cxcywh(b), box_area(b)):
        assert not torch.isnan(out).any()


@SETTINGS
@given(a=boxes(valid=True), b=boxes(valid=True))
def test_box_iou_on_valid_boxes(a, b):
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b)) and iou.dtype == torch.float32
    both_empty = (box_area(a)[:, None] == 0) & (box_area(b)[None, :] == 0)
    assert not torch.isnan(iou[~both_empty]).any()  # documented: NaN only for two zero-area boxes
    finite = iou[~both_empty]
    assert ((finite >= 0) & (finite <= 1 + 1e-6)).all()
    torch.testing.assert_close(iou, box_iou(b, a).T, equal_nan=True)
    positive = box_area(a) > 0
    if positive.any():
        diag = box_iou(a[positive], a[positive]).diagonal()
        torch.testing.assert_close(diag, torch.ones_like(diag), atol=1e-5, rtol=0)
    batched = batched_box_iou(a[None], b[None])[0]
    torch.testing.assert_close(batched[~both_empty], iou[~both_empty], atol=1e-5, rtol=1e-4)


@SETTINGS
@given(a=boxes(max_n=4), b=boxes(max_n=4), n=st.integers(1, 3))
def test_batched_box_iou_never_nan(a, b, n):
    """Any finite boxes, inverted and degenerate included (e.g. zero padding)."""
    iou = batched_box_iou(a.expand(n, -1, -1), b.expand(n, -1, -1))
    assert iou.shape == (n, len(a), len(b))
    assert not torch.isnan(iou).any()
    assert ((iou >= 0) & (iou <= 1 + 1e-6)).all()


def test_batched_box_iou_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, G, 4\]"):
        batched_box_iou(torch.zeros(2, 4), torch.zeros(1, 2, 4))


@SETTINGS
@given(b=boxes(), h=st.integers(1, 500), w=st.integers(1, 500))
def test_clip_boxes(b, h, w):
    out = clip_boxes(b, (h, w))
    assert out.shape == b.shape and not torch.isnan(out).any()
    assert (out[:, 0::2] >= 0).all() and (out[:, 0::2] <= w).all()
    assert (out[:, 1::2] >= 0).all() and (out[:, 1::2] <= h).all()
    sizes = torch.tensor([[h, w]]).expand(len(b), 2)
    torch.testing.assert_close(clip_boxes(b, sizes), out)
    torch.testing.assert_close(clip_boxes(out, (h, w)), out)


@SETTINGS
@given(b=boxes(), min_size=st.floats(0, 100))
def test_remove_small_boxes_and_validate_boxes(b, min_size):
    keep = remove_small_boxes(b, min_size)
    assert keep.dtype == torch.bool and keep.shape == (len(b),)
    validate_boxes(b)  # finite boxes pass
    inverted = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if inverted.any():
        with pytest.raises(ValueError, match="x2 > x1"):
            validate_boxes(b, require_positive=True)
    else:
        validate_boxes(b, require_positive=True)
    if len(b):
        bad = b.clone()
        bad[0, 0] = float("nan")
        with pytest.raises(ValueError, match="non-finite"):
            validate_boxes(bad)


_ref_coord = st.floats(-1e5, 1e5, allow_nan=False, width=32)
_delta = st.floats(allow_nan=False, allow_infinity=False, width=32)


@SETTINGS
@given(
    refs=st.lists(st.tuples(_ref_coord, _ref_coord, _ref_coord, _ref_coord), min_size=1, max_size=5),
    deltas=st.lists(_delta, min_size=12, max_size=12),
    k=st.sampled_from([1, 3]),
)
def test_box_coder_decode_never_nan(refs, deltas, k):
    """Any finite deltas (a diverging regressor) on any finite reference boxes, degenerate ones included."""
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor(refs, dtype=torch.float32)
    d = torch.tensor(deltas[: 4 * k], dtype=torch.float32).expand(len(ref), -1)
    out = coder.decode(d, ref)
    assert out.shape == ((len(ref), 4) if k == 1 else (len(ref), k, 4))
    assert not torch.isnan(out).any()


@st.composite
def positive_boxes(draw, n):
    rows = []
    for _ in range(n):
        x, y = draw(st.floats(-1e3, 1e3, width=32)), draw(st.floats(-1e3, 1e3, width=32))
        w, h = draw(st.floats(0.5, 1e3, width=32)), draw(st.floats(0.5, 1e3, width=32))
        rows.append([x, y, x + w, y + h])
    return torch.tensor(rows, dtype=torch.float32)


@SETTINGS
@given(data=st.data(), n=st.integers(1, 6))
def test_box_coder_round_trip_on_positive_boxes(data, n):
    gt, ref = data.draw(positive_boxes(n)), data.draw(positive_boxes(n))
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0), clamp=math.log(1e4))
    deltas = coder.encode(gt, ref)
    assert torch.isfinite(deltas).all()
    back = coder.decode(deltas, ref)
    torch.testing.assert_close(back, gt, atol=1e-2, rtol=1e-4)


_tensorish = st.one_of(
    st.builds(lambda n: torch.rand(n, 4) * 50, st.integers(0, 3)),
    st.builds(lambda n: torch.randint(0, 9, (n, 4)), st.integers(0, 3)),
    st.builds(lambda n: torch.rand(n), st.integers(0, 3)),
    st.just(torch.tensor([[1.0, float("nan"), 3.0, 4.0]])),
    st.just([1.0, 2.0, 3.0, 4.0]),
    st.none(),
)
_labels = st.one_of(
    st.builds(lambda n: torch.randint(1, 4, (n,)), st.integers(0, 3)),
    st.builds(lambda n: torch.rand(n), st.integers(0, 3)),
    st.just(torch.tensor([[1]])),
    st.just(torch.tensor([True])),
    st.just([1]),
)


@SETTINGS
@given(targets=st.lists(st.fixed_dictionaries({}, optional={"boxes": _tensorish, "labels": _labels}), max_size=3))
def test_packed_targets_from_random_lists(targets):
    try:
        packed = PackedTargets.from_list(targets)
    except ValueError:
        return
    assert packed.boxes.dtype == torch.float32 and packed.boxes.shape[1] == 4
    assert torch.isfinite(packed.boxes).all()
    assert packed.labels.dtype == torch.int64 and len(packed.labels) == len(packed.boxes) == len(packed.batch_idx)
