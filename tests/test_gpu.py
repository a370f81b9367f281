"""GPU-only checks (skipped without CUDA; CI has no GPU): run them with `pytest -m gpu`."""

import pytest
import torch

from detkit.heads.roi_align_cpu import roi_align
from detkit.models import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _batch(device):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g).to(device) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 60.0, 120.0, 110.0]], device=device),
            "labels": torch.tensor([1, 2], device=device),
            "masks": torch.zeros(2, 128, 128, dtype=torch.uint8, device=device),
        }
        for _ in images
    ]
    for t in targets:
        for k, (x1, y1, x2, y2) in enumerate(t["boxes"].int().tolist()):
            t["masks"][k, y1:y2, x1:x2] = 1
    return images, targets


@pytest.mark.parametrize("name", ["faster_rcnn_tiny", "mask_rcnn_tiny"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_step_and_predict_on_cuda(name, dtype):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).cuda().train()
    images, targets = _batch("cuda")
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        losses = model(images, targets)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values()), losses
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        results = model.predict(images)
    for res in results:
        assert res["boxes"].device.type == "cuda" and res["boxes"].dtype == torch.float32


def test_roi_align_on_cuda_is_torchvision():
    from torchvision.ops import roi_align as tv_roi_align

    x = torch.randn(2, 64, 32, 32, device="cuda", requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 60.0, 70.0], [1, 10.0, 5.0, 100.0, 120.0]], device="cuda").repeat(300, 1)
    out = roi_align(x, rois, 7, 0.25, 2)
    assert "CPURoIAlign" not in type(out.grad_fn).__name__
    assert torch.equal(out, tv_roi_align(x, rois, (7, 7), 0.25, 2))
