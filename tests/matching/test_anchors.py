import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detkit.matching import AnchorGenerator, make_cell_anchors


def test_single_level_hand_written_anchors():
    gen = AnchorGenerator(sizes=((32,),), aspect_ratios=((1.0,),), strides=(16,))
    (anchors,) = gen([(2, 2)], device="cpu")
    expected = torch.tensor(
        [
            [-16.0, -16.0, 16.0, 16.0],  # (y=0, x=0)
            [0.0, -16.0, 32.0, 16.0],  # (y=0, x=1)
            [-16.0, 0.0, 16.0, 32.0],  # (y=1, x=0)
            [0.0, 0.0, 32.0, 32.0],  # (y=1, x=1)
        ]
    )
    assert anchors.dtype == torch.float32
    assert torch.equal(anchors, expected)


def test_cell_anchors_are_rounded_and_ratio_major():
    cell = make_cell_anchors((32.0, 64.0), (0.5, 2.0))
    assert cell.shape == (4, 4)
    # ratio 0.5: h = 32 * sqrt(0.5) = 22.6, w = 45.25 -> half sizes rounded to 23 and 11
    assert cell[0].tolist() == [-23.0, -11.0, 23.0, 11.0]
    assert cell[1].tolist() == [-45.0, -23.0, 45.0, 23.0]
    assert cell[2].tolist() == [-11.0, -23.0, 11.0, 23.0]


def test_matches_torchvision_on_two_levels():
    sizes = ((32.0, 48.0), (64.0,))
    ratios = (0.5, 1.0, 2.0)
    ours = AnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=(8, 16))
    theirs = TVAnchorGenerator(sizes=sizes, aspect_ratios=(ratios, ratios))
    # torchvision derives strides as image size // feature size: 48 // 6 = 8, 48 // 3 = 16.
    features = [torch.zeros(1, 1, 6, 4), torch.zeros(1, 1, 3, 2)]
    images = ImageList(torch.zeros(1, 3, 48, 32), [(48, 32)])
    expected = theirs(images, features)[0]
    levels = ours([(6, 4), (3, 2)], device=torch.device("cpu"))
    assert [a.shape[0] for a in levels] == [6 * 4 * 6, 3 * 2 * 3]
    assert ours.num_anchors_per_location() == theirs.num_anchors_per_location() == [6, 3]
    assert torch.equal(torch.cat(levels), expected)


def test_cache_dtype_and_no_state():
    gen = AnchorGenerator(sizes=((16,), (32,)), aspect_ratios=((1.0,), (0.5, 1.0)), strides=(4, 8))
    assert gen.state_dict() == {}
    first = gen([(3, 3), (2, 2)], device="cpu")
    second = gen([(3, 3), (2, 2)], device="cpu")
    assert all(a is b for a, b in zip(first, second))
    half = gen([(3, 3), (2, 2)], device="cpu", dtype=torch.float16)
    assert half[1].dtype == torch.float16 and torch.equal(half[1].float(), first[1])
    assert gen.num_anchors_per_location() == [1, 2]


def test_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="one entry per level"):
        AnchorGenerator(sizes=((16,), (32,)), aspect_ratios=((1.0,),), strides=(4, 8))
    gen = AnchorGenerator(sizes=((16,),), aspect_ratios=(1.0,), strides=(4,))
    with pytest.raises(ValueError, match="expected 1 feature sizes"):
        gen([(2, 2), (1, 1)], device="cpu")
