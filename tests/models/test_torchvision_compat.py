"""detkit loads torchvision's detection checkpoints and predicts the same detections."""

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

from detkit.layers import convert_frozen_batchnorm
from detkit.models import build_model

# 2000 pre-NMS proposals per level: > 4000 boxes per image, so torchvision runs its exact
# per-level NMS (its coordinate-offset NMS for fewer boxes loses float32 precision).
SIZES = dict(min_size=256, max_size=320, rpn_pre_nms_top_n_test=2000)


def _randomise_and_bias(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.8, 1.2)
            m.weight.data.uniform_(0.8, 1.2)
    # a biased class logit so detections survive the 0.05 score threshold
    model.roi_heads.box_predictor.cls_score.bias.data[17] = 4.0
    model.roi_heads.box_predictor.cls_score.bias.data[3] = 3.5
    # torchvision's COCO checkpoints run with FrozenBatchNorm2d, as detkit does by default
    return convert_frozen_batchnorm(model).eval()


def _compare(tv_out, dk_out, with_masks):
    assert tv_out["boxes"].shape[0] > 5, "the test needs detections to compare"
    assert dk_out["boxes"].shape == tv_out["boxes"].shape
    # pair detections by label and box (equal scores may be ordered differently)
    cost = torch.cdist(tv_out["boxes"], dk_out["boxes"], p=1)
    cost = (
        cost
        + 1e3 * (tv_out["scores"][:, None] - dk_out["scores"][None]).abs()
        + 1e6 * (tv_out["labels"][:, None] != dk_out["labels"][None])
    )
    match = cost.argmin(1)
    assert match.unique().numel() == match.numel(), "detections do not pair up one to one"
    assert torch.equal(dk_out["labels"][match], tv_out["labels"])
    assert torch.allclose(dk_out["scores"][match], tv_out["scores"], atol=1e-4)
    assert torch.allclose(dk_out["boxes"][match], tv_out["boxes"], atol=1e-2)
    if with_masks:
        tv_masks = (tv_out["masks"][:, 0] >= 0.5).to(torch.uint8)
        agree = (tv_masks == dk_out["masks"][match]).float().mean().item()
        assert agree >= 0.999, agree


CUDA = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(
    "builder,name", [(fasterrcnn_resnet50_fpn, "faster_rcnn_r50_fpn"), (maskrcnn_resnet50_fpn, "mask_rcnn_r50_fpn")]
)
def test_same_detections_as_torchvision(tmp_path, builder, name, device):
    torch.manual_seed(0)
    tv = _randomise_and_bias(builder(weights=None, weights_backbone=None, num_classes=91, **SIZES))
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    dk = build_model(name, num_classes=90, weights=str(path), **SIZES).eval().to(device)
    tv = tv.to(device)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 240, 300, generator=g).to(device), torch.rand(3, 200, 180, generator=g).to(device)]
    with torch.no_grad():
        tv_outs = tv(images)
    dk_outs = dk.predict(images)
    for tv_out, dk_out in zip(tv_outs, dk_outs):
        _compare(tv_out, dk_out, name.startswith("mask"))
