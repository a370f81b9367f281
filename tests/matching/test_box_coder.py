import math

import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from detkit.matching import BoxCoder


def _random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 50
    wh = torch.rand(n, 2, generator=generator) * 20 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_hand_computed_encode():
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 25.0, 15.0]])  # centre (15, 10), size 20 x 10
    assert torch.allclose(BoxCoder().encode(gt, ref), torch.tensor([[1.0, 0.5, math.log(2.0), 0.0]]))
    weighted = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode(gt, ref)
    assert torch.allclose(weighted, torch.tensor([[10.0, 5.0, 5 * math.log(2.0), 0.0]]))


def test_round_trip_with_leading_dims():
    gen = torch.Generator().manual_seed(0)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = _random_boxes(6, gen).reshape(2, 3, 4)
    gt = _random_boxes(6, gen).reshape(2, 3, 4)
    deltas = coder.encode(gt, ref)
    assert deltas.shape == (2, 3, 4)
    assert torch.allclose(coder.decode(deltas, ref), gt, atol=1e-4)


def test_equals_torchvision_box_coder():
    gen = torch.Generator().manual_seed(1)
    weights = (10.0, 10.0, 5.0, 5.0)
    ours, theirs = BoxCoder(weights), TVBoxCoder(weights)
    ref, gt = _random_boxes(5, gen), _random_boxes(5, gen)
    assert torch.allclose(ours.encode(gt, ref), theirs.encode([gt], [ref])[0], atol=1e-6)
    deltas = torch.randn(5, 3 * 4, generator=gen)
    decoded = ours.decode(deltas, ref)
    assert decoded.shape == (5, 3, 4)
    assert torch.allclose(decoded, theirs.decode(deltas, [ref]), atol=1e-5)
    single = ours.decode(deltas[:, :4], ref)
    assert single.shape == (5, 4)
    assert torch.allclose(single, theirs.decode(deltas[:, :4], [ref])[:, 0], atol=1e-5)


def test_clamp_limits_growth():
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = BoxCoder().decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), ref)
    assert torch.isfinite(boxes).all()
    assert torch.allclose(boxes, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]))  # width 1000 around 8
    small = BoxCoder(clamp=math.log(2.0)).decode(torch.tensor([[0.0, 0.0, 5.0, -1.0]]), ref)
    assert torch.allclose(small[0, 2] - small[0, 0], torch.tensor(32.0))
    assert torch.allclose(small[0, 3] - small[0, 1], torch.tensor(16 * math.exp(-1.0)))


def test_float32_under_bfloat16_autocast():
    gen = torch.Generator().manual_seed(2)
    ref, gt = _random_boxes(4, gen), _random_boxes(4, gen)
    coder = BoxCoder()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        deltas = coder.encode(gt.bfloat16(), ref)
        boxes = coder.decode(torch.randn(4, 8).bfloat16(), ref.bfloat16())
    assert deltas.dtype == torch.float32 and boxes.dtype == torch.float32
