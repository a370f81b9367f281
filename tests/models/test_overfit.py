"""A small detector must be able to memorise one image: the whole training path works."""

import pytest
import torch

from detkit.models import build_model
from detkit.structures import box_iou


def _scene():
    image = torch.full((3, 128, 128), 0.2)
    boxes = torch.tensor([[10.0, 12.0, 50.0, 60.0], [70.0, 64.0, 118.0, 110.0]])
    colours = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2)]
    masks = torch.zeros((2, 128, 128), dtype=torch.uint8)
    for k, ((x1, y1, x2, y2), c) in enumerate(zip(boxes.int().tolist(), colours)):
        image[:, y1:y2, x1:x2] = torch.tensor(c)[:, None, None]
        masks[k, y1:y2, x1:x2] = 1
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}


@pytest.mark.slow  # > 6 s: `make test-all`
def test_overfit_one_image():
    torch.manual_seed(0)
    image, target = _scene()
    model = build_model("mask_rcnn_tiny", num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    first = None
    for step in range(120):
        losses = model([image], [target])
        total = sum(losses.values())
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.15 * first, (first, {k: v.item() for k, v in losses.items()})
    model.eval()
    result = model.predict([image])[0]
    top = result["scores"] > 0.5
    iou = box_iou(result["boxes"][top], target["boxes"])
    for k in range(2):
        hits = (iou[:, k] > 0.7) & (result["labels"][top] == target["labels"][k])
        assert hits.any(), f"box {k} not detected: {result}"
    best = result["scores"].argmax()
    mask = result["masks"][best].bool()
    gt = target["masks"][result["labels"][best] - 1].bool()
    assert (mask & gt).sum() / (mask | gt).sum() > 0.7
