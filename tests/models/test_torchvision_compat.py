"""detkit loads torchvision's detection checkpoints and gives the same proposals and detections.

Randomly initialised torchvision models (no downloads) are saved and loaded into detkit.
Sizes: 800 x 1216 (the COCO standard size: P5 25 x 38, P6 13 x 19 with vertical stride 61),
288 x 352 in a two-image batch (P5 9 x 11, P6 5 x 6) and 480 x 608 from a resized 300 x 380
image (P5 15 x 19, P6 8 x 10): P5 is odd in all three, so P6's strides are not 64.

One torchvision Mask R-CNN run serves both detkit models: its box branch is a Faster R-CNN
with the same weights, so detkit's Faster R-CNN (loaded from the same checkpoint without
the mask keys) must give its proposals and boxes.

The exactness tests run detkit with torchvision's arithmetic: NCHW batches, the frozen BNs
as two ops and torchvision's kernels (`torchvision_arithmetic`: `configure_kernels(fold_bn=False,
cpu_kernels=False)`). detkit's CPU defaults (channels-last batches, BNs folded
into the convolutions) round differently; `test_cpu_defaults_stay_close_to_torchvision` bounds
how far that moves the detections.
"""

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

from detkit.layers import convert_frozen_batchnorm
from detkit.models import build_model, configure_kernels

# (image sizes of the batch, min_size, max_size, detections per image); fewer detections at
# the small sizes keep the mask head's cost (0.5 GFLOP per detection) down
CASES = {
    "800x1216": ([(800, 1216)], 800, 1333, 100),
    "288x352_batch": ([(288, 352), (250, 300)], 288, 352, 20),
    "480x608_resized": ([(300, 380)], 480, 800, 20),
}


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


def _pair(tv_boxes, dk_boxes, extra_cost=None):
    """Index into dk for every tv row, by the closest box (one to one)."""
    cost = torch.cdist(tv_boxes, dk_boxes, p=1)
    if extra_cost is not None:
        cost = cost + extra_cost
    match = cost.argmin(1)
    assert match.unique().numel() == match.numel(), "rows do not pair up one to one"
    return match


def _compare_proposals(tv_props, dk_boxes, dk_batch_idx):
    """Same number of proposals per image, each within 1e-3 px of one of the other set (both
    ways; clipped proposals may repeat, so no one-to-one pairing)."""
    for i, tv_p in enumerate(tv_props):
        dk_p = dk_boxes[dk_batch_idx == i]
        assert dk_p.shape == tv_p.shape, (dk_p.shape, tv_p.shape)
        dist = torch.cdist(tv_p.double(), dk_p.double(), p=float("inf"))
        assert dist.min(1).values.max() <= 1e-3 and dist.min(0).values.max() <= 1e-3


def _compare(tv_out, dk_out, with_masks, *, score_atol=1e-4, box_atol=1e-2, mask_agree=0.999):
    assert tv_out["boxes"].shape[0] >= 5, "the test needs detections to compare"
    assert dk_out["boxes"].shape == tv_out["boxes"].shape
    # pair detections by label and box (equal scores may be ordered differently)
    extra = 1e3 * (tv_out["scores"][:, None] - dk_out["scores"][None]).abs() + 1e6 * (
        tv_out["labels"][:, None] != dk_out["labels"][None]
    )
    match = _pair(tv_out["boxes"], dk_out["boxes"], extra)
    assert torch.equal(dk_out["labels"][match], tv_out["labels"])
    torch.testing.assert_close(dk_out["scores"][match], tv_out["scores"], rtol=0, atol=score_atol)
    torch.testing.assert_close(dk_out["boxes"][match], tv_out["boxes"], rtol=0, atol=box_atol)
    if with_masks:
        tv_masks = (tv_out["masks"][:, 0] >= 0.5).to(torch.uint8)
        agree = (tv_masks == dk_out["masks"][match]).float().mean().item()
        assert agree >= mask_agree, agree


def _capture_rpn(model, key, store):
    def hook(module, args, output):
        store[key] = output

    return model.rpn.register_forward_hook(hook)


@pytest.fixture
def torchvision_arithmetic():
    """Sets a built detkit model to torchvision's arithmetic: NCHW batches, frozen BNs as two ops
    (not folded), torchvision's kernels (`configure_kernels(fold_bn=False, cpu_kernels=False)`)."""
    return lambda model: configure_kernels(model, fold_bn=False, cpu_kernels=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random torchvision Mask R-CNN and its checkpoint, with and without the mask keys."""
    torch.manual_seed(0)
    tv = _randomise_and_bias(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91))
    root = tmp_path_factory.mktemp("tv")
    state = tv.state_dict()
    torch.save(state, root / "mask.pth")
    torch.save({k: v for k, v in state.items() if "mask" not in k}, root / "faster.pth")
    return tv, root


def _images(sizes, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


def _run_torchvision(tv, images, min_size, max_size, detections):
    tv.transform.min_size, tv.transform.max_size = (min_size,), max_size
    tv.roi_heads.detections_per_img = detections
    caught = {}
    handle = _capture_rpn(tv, "rpn", caught)
    try:
        with torch.no_grad():
            outs = tv(images)
    finally:
        handle.remove()
    return outs, caught["rpn"][0]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_same_proposals_and_detections_as_torchvision(checkpoints, case, torchvision_arithmetic):
    tv, root = checkpoints
    sizes, min_size, max_size, detections = CASES[case]
    images = _images(sizes)
    tv_outs, tv_props = _run_torchvision(tv, images, min_size, max_size, detections)
    for name, path, with_masks in (
        ("mask_rcnn_r50_fpn", root / "mask.pth", True),
        ("faster_rcnn_r50_fpn", root / "faster.pth", False),
    ):
        dk = build_model(
            name,
            num_classes=90,
            weights=str(path),
            min_size=min_size,
            max_size=max_size,
            detections_per_image=detections,
        )
        dk = torchvision_arithmetic(dk).eval()
        caught = {}
        _capture_rpn(dk, "rpn", caught)
        dk_outs = dk.predict(images)
        dk_boxes, dk_batch_idx, _ = caught["rpn"]
        _compare_proposals(tv_props, dk_boxes, dk_batch_idx)
        for tv_out, dk_out in zip(tv_outs, dk_outs):
            _compare(tv_out, dk_out, with_masks)


@pytest.mark.slow
def test_cpu_defaults_stay_close_to_torchvision(checkpoints):
    """detkit's CPU defaults at 800 x 1216: channels-last and folded BNs move these random-weight
    detections by < 5e-4 in score and < 0.3 px (measured; bounds 2x that), mask pixels 99.999%."""
    tv, root = checkpoints
    sizes, min_size, max_size, detections = CASES["800x1216"]
    images = _images(sizes)
    tv_outs, _ = _run_torchvision(tv, images, min_size, max_size, detections)
    dk = build_model(
        "mask_rcnn_r50_fpn", num_classes=90, weights=str(root / "mask.pth"), min_size=min_size, max_size=max_size
    ).eval()
    batch, _ = dk.prepare(images)
    assert batch.tensor.is_contiguous(memory_format=torch.channels_last)
    for tv_out, dk_out in zip(tv_outs, dk.predict(images)):
        _compare(tv_out, dk_out, True, score_atol=1e-3, box_atol=0.6)


def test_p6_anchors_follow_torchvision_strides_at_800x1216():
    """Cheap guard of the P6 stride (Hp // H_l): anchors equal torchvision's for the real feature sizes."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    dk = build_model("faster_rcnn_r50_fpn", num_classes=2, min_size=800, max_size=1333)
    gen = dk.rpn.anchor_generator
    tv_gen = TVAnchorGenerator(tuple((s,) for s in (32, 64, 128, 256, 512)), ((0.5, 1.0, 2.0),) * 5)
    grids = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    features = [torch.zeros(1, 1, h, w) for h, w in grids]
    expected = tv_gen(ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)]), features)[0]
    ours = torch.cat(gen(grids, device="cpu", image_size=(800, 1216)))
    assert torch.equal(ours, expected)
    assert gen.level_strides(grids, (800, 1216))[-1] == (61, 64)


CUDA = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
)


@pytest.mark.parametrize("device", [CUDA])
def test_faster_rcnn_checkpoint_of_torchvision_builder(tmp_path, device, torchvision_arithmetic):
    """A checkpoint straight from torchvision's Faster R-CNN builder, on CUDA (the CPU cases above)."""
    sizes = dict(min_size=256, max_size=320)
    torch.manual_seed(0)
    tv = _randomise_and_bias(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **sizes))
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    dk = torchvision_arithmetic(
        build_model("faster_rcnn_r50_fpn", num_classes=90, weights=str(tmp_path / "tv.pth"), **sizes)
    )
    dk, tv = dk.eval().to(device), tv.to(device)
    images = [img.to(device) for img in _images([(240, 300), (200, 180)])]
    with torch.no_grad():
        tv_outs = tv(images)
    for tv_out, dk_out in zip(tv_outs, dk.predict(images)):
        _compare({k: v.cpu() for k, v in tv_out.items()}, {k: v.cpu() for k, v in dk_out.items()}, False)


@pytest.mark.slow
def test_bf16_autocast_matches_torchvision_layer_by_layer(checkpoints, torchvision_arithmetic):
    """Under CPU bfloat16 autocast every network layer gives torchvision's bf16 values; box
    coordinates stay float32 in detkit (torchvision rounds anchors, proposals and decoded
    boxes to bf16), so whole-pipeline detections are compared stage by stage on equal inputs."""
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    tv, root = checkpoints
    tv.transform.min_size, tv.transform.max_size = (288,), 352
    dk = build_model("mask_rcnn_r50_fpn", num_classes=90, weights=str(root / "mask.pth"), min_size=288, max_size=352)
    dk = torchvision_arithmetic(dk).eval()
    images = _images([(288, 352)])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tv_list, _ = tv.transform(images)
            tv_feats = tv.backbone(tv_list.tensors)
            batch, _ = dk.prepare(images)
            dk_feats = dk.backbone(batch.tensor)
            # backbone + FPN
            assert [v.dtype for v in dk_feats.values()] == [torch.bfloat16] * 5
            for tv_f, dk_f in zip(tv_feats.values(), dk_feats.values()):
                assert torch.equal(tv_f, dk_f)
            # RPN head: objectness and deltas in the same (y, x, anchor) order
            tv_obj, tv_deltas = concat_box_prediction_layers(*tv.rpn.head(list(tv_feats.values())))
            dk_obj, dk_deltas, _ = dk.rpn.head(list(dk_feats.values()))
            assert torch.equal(tv_obj.flatten(), dk_obj[0]) and torch.equal(tv_deltas, dk_deltas[0])
            # detkit's proposals: float32, the float32 decoding of the bf16 head outputs
            dk_props, dk_idx, _ = dk.rpn(dk_feats, batch)
            assert dk_props.dtype == torch.float32
            # box branch on the same float32 RoIs
            rois, idx = dk_props, dk_idx
            tv_x = tv.roi_heads.box_head(tv.roi_heads.box_roi_pool(tv_feats, [rois], tv_list.image_sizes))
            tv_logits, tv_reg = tv.roi_heads.box_predictor(tv_x)
            dk_x = dk.roi_heads.box_head(dk.roi_heads.box_pooler(dk_feats, rois, idx))
            dk_logits, dk_reg = dk.roi_heads.box_predictor(dk_x)
            assert torch.equal(tv_logits, dk_logits) and torch.equal(tv_reg, dk_reg)
            # mask branch on the same boxes (torchvision keeps a background channel first)
            boxes = rois[:20]
            tv_masks = tv.roi_heads.mask_predictor(
                tv.roi_heads.mask_head(tv.roi_heads.mask_roi_pool(tv_feats, [boxes], tv_list.image_sizes))
            )
            dk_masks = dk.roi_heads.mask_head(dk.roi_heads.mask_pooler(dk_feats, boxes, idx[:20]))
            assert torch.equal(tv_masks[:, 1:], dk_masks)
            # end to end: well-formed float32 detections
            dets = dk.predict(images)[0]
    assert dets["boxes"].dtype == torch.float32 and dets["masks"].dtype == torch.uint8
    assert dets["boxes"].shape[0] > 0
