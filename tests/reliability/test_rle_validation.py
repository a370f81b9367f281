"""detkit.utils.rle: the compressed-RLE check that guards pycocotools' unchecked decoder."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from detkit.utils.rle import compressed_rle_counts, compressed_rle_problem


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO runs (column-major, starting with zeros)."""
    runs, current, n = [], 0, 0
    for v in mask.flatten(order="F"):
        if v == current:
            n += 1
        else:
            runs.append(n)
            current, n = v, 1
    runs.append(n)
    return runs


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), density=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_counts_match_pycocotools_encoding(h, w, density, seed):
    mask = np.asfortranarray((np.random.default_rng(seed).random((h, w)) < density).astype(np.uint8))
    counts = mask_utils.encode(mask)["counts"]
    assert compressed_rle_counts(counts) == _runs(mask)
    assert compressed_rle_counts(counts.decode("ascii")) == _runs(mask)
    assert compressed_rle_problem(counts.decode("ascii"), h, w) is None


def test_problems_are_named():
    small = mask_utils.encode(np.asfortranarray(np.eye(10, dtype=np.uint8)))["counts"].decode("ascii")
    assert "add up to 100" in compressed_rle_problem(small, 20, 30)
    assert "truncated" in compressed_rle_problem("o", 1, 1)  # 'o' = continuation bit set, nothing follows
    assert "invalid character" in compressed_rle_problem("zz", 1, 1)
    assert compressed_rle_problem("", 2, 2) is not None


@pytest.mark.parametrize("text", ["0", "1", "00", "?"])
def test_short_strings(text):
    runs = compressed_rle_counts(text)
    assert len(runs) == len(text)
