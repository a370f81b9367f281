"""`paste_masks_numpy` (no torch, no detkit model) gives the masks of detkit's batched torch paste."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detkit.export import paste_masks_numpy
from detkit.heads.mask_head import paste_masks


def _boxes(rng, d, h, w):
    xy = rng.uniform(-0.1, 0.9, (d, 2)) * [w, h]
    wh = rng.uniform(0.5, 80, (d, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("size", [(64, 96), (123, 77)])
def test_numpy_paste_equals_torch_paste(size):
    rng = np.random.default_rng(0)
    h, w = size
    d = 40  # more than one chunk
    probs = rng.uniform(0, 1, (d, 28, 28)).astype(np.float32)
    boxes = _boxes(rng, d, h, w)
    boxes[0] = [3.0, 4.0, 3.2, 4.1]  # tiny box
    boxes[1] = [-20.0, -5.0, w + 30.0, h + 2.0]  # larger than the image
    ref = paste_masks(torch.from_numpy(probs), torch.from_numpy(boxes), (h, w), threshold=0.5).numpy()
    got = paste_masks_numpy(probs, boxes, (h, w), threshold=0.5)
    assert got.dtype == np.uint8 and got.shape == (d, h, w)
    assert (got == ref).mean() >= 0.9999
    assert got.any()
    soft_ref = paste_masks(torch.from_numpy(probs), torch.from_numpy(boxes), (h, w), threshold=None).numpy()
    np.testing.assert_allclose(paste_masks_numpy(probs, boxes, (h, w), threshold=None), soft_ref, atol=1e-5)


def test_numpy_paste_empty_and_mismatch():
    assert paste_masks_numpy(np.zeros((0, 28, 28)), np.zeros((0, 4)), (5, 6)).shape == (0, 5, 6)
    with pytest.raises(ValueError, match="mask_probs has 2 masks but boxes has 1 rows"):
        paste_masks_numpy(np.zeros((2, 28, 28)), np.zeros((1, 4)), (5, 6))
