"""Shared inputs and checks for the detectors that take proposals (R-CNN, Fast R-CNN)."""

import torch

from detkit.models import build_model
from detkit.structures import box_iou


def images_targets_proposals(size=(96, 112)):
    """Two random images, one with two objects and one with none, and a few proposals each."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 50.0, 70.0], [55.0, 30.0, 100.0, 90.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # no objects
    ]
    proposals = [
        torch.tensor(
            [[12.0, 18.0, 52.0, 68.0], [50.0, 28.0, 98.0, 92.0], [0.0, 0.0, 30.0, 30.0], [20.0, 40.0, 90.0, 95.0]]
        ),
        torch.tensor([[5.0, 5.0, 60.0, 60.0], [40.0, 10.0, 110.0, 80.0]]),
    ]
    return images, targets, proposals


def check_predictions(results, images, num_classes):
    """One result per image with consistent shapes, valid labels and boxes inside the image."""
    assert len(results) == len(images)
    for img, res in zip(images, results):
        d = res["boxes"].shape[0]
        assert res["boxes"].shape == (d, 4) and res["scores"].shape == (d,) and res["labels"].shape == (d,)
        assert res["labels"].dtype == torch.int64
        if d:
            assert res["labels"].min() >= 1 and res["labels"].max() <= num_classes
            assert (res["boxes"][:, 2:] >= res["boxes"][:, :2]).all()
            assert res["boxes"][:, 2].max() <= img.shape[2] + 1e-4 and res["boxes"][:, 3].max() <= img.shape[1] + 1e-4


def scene():
    """A 128x128 image with a red and a green rectangle (labels 1 and 2)."""
    image = torch.full((3, 128, 128), 0.2)
    boxes = torch.tensor([[10.0, 12.0, 50.0, 60.0], [70.0, 64.0, 118.0, 110.0]])
    for (x1, y1, x2, y2), c in zip(boxes.int().tolist(), [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2)]):
        image[:, y1:y2, x1:x2] = torch.tensor(c)[:, None, None]
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2])}


def jittered_and_random_proposals(gt: torch.Tensor, g: torch.Generator, size: int = 128) -> torch.Tensor:
    """15 jittered copies of each gt box (up to 20% of its size per coordinate) and 30 random boxes."""
    jit = gt.repeat_interleave(15, 0)
    wh = (jit[:, 2:] - jit[:, :2]).repeat(1, 2)
    jit = jit + (torch.rand(jit.shape, generator=g) - 0.5) * 0.4 * wh
    xy = torch.rand(30, 2, generator=g) * (size - 28)
    rnd = torch.cat([xy, xy + 10 + torch.rand(30, 2, generator=g) * 50], 1)
    return torch.cat([jit, rnd]).clamp(0, size)


def overfit_one_image_and_detect_both(model_name: str, steps: int) -> None:
    """Train `model_name` on one scene: the loss falls 20x and both objects are found."""
    torch.manual_seed(0)
    image, target = scene()
    proposals = [jittered_and_random_proposals(target["boxes"], torch.Generator().manual_seed(0))]
    model = build_model(model_name, num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    first = None
    for _ in range(steps):
        losses = model([image], [target], proposals=proposals)
        total = sum(losses.values())
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.05 * first, (first, {k: v.item() for k, v in losses.items()})
    model.eval()
    result = model.predict([image], proposals=proposals)[0]
    top = result["scores"] > 0.5
    iou = box_iou(result["boxes"][top], target["boxes"])
    for k in range(2):
        hits = (iou[:, k] > 0.7) & (result["labels"][top] == target["labels"][k])
        assert hits.any(), f"box {k} not detected: {result}"
