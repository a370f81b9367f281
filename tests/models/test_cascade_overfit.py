"""Cascade R-CNN memorises one image: its three box stages train together and detect both objects."""

import pytest
import torch
from test_overfit import _scene

from detkit.models import build_model
from detkit.structures import box_iou


@pytest.mark.slow  # > 6 s: `make test-all`
def test_cascade_overfits_one_image():
    torch.manual_seed(0)
    image, target = _scene()
    target = {"boxes": target["boxes"], "labels": target["labels"]}
    model = build_model("cascade_rcnn_tiny", num_classes=2).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(120):
        losses = model([image], [target])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        totals.append(sum(v.item() for v in losses.values()))
    final = {k: round(v.item(), 4) for k, v in losses.items()}
    assert totals[-1] < 0.15 * totals[0], (totals[0], final)
    assert all(final[f"loss_box_reg_stage{t}"] < 0.1 * totals[0] for t in (1, 2, 3)), final  # every stage learnt
    result = model.eval().predict([image])[0]
    keep = result["scores"] > 0.5
    for box, label in zip(target["boxes"], target["labels"]):
        iou = box_iou(result["boxes"][keep], box[None])[:, 0]
        assert ((iou > 0.8) & (result["labels"][keep] == label)).any(), f"{box.tolist()} not detected: {result}"
