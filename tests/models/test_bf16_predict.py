"""predict(precision="bf16"): bfloat16 autocast for the network, float32 boxes and scores out,
detections close to fp32's on a trained model."""

import pytest
import torch

from detkit.models import build_model


def _two_squares():
    """A 128x128 image with a red and a green square (labels 1, 2) on grey."""
    image = torch.full((3, 128, 128), 0.3)
    boxes = torch.tensor([[16.0, 20.0, 56.0, 64.0], [72.0, 60.0, 116.0, 112.0]])
    for (x1, y1, x2, y2), colour in zip(boxes.int().tolist(), [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2)]):
        image[:, y1:y2, x1:x2] = torch.tensor(colour)[:, None, None]
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2])}


@pytest.fixture(scope="module")
def trained_tiny():
    """faster_rcnn_tiny memorising the two squares (Adam, 80 steps: both found with scores > 0.9)."""
    torch.manual_seed(0)
    image, target = _two_squares()
    model = build_model("faster_rcnn_tiny", num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(80):
        loss = sum(model([image], [target]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), image, target


def test_bf16_detections_match_fp32(trained_tiny):
    model, image, target = trained_tiny
    fp32 = model.predict([image])[0]
    bf16 = model.predict([image], precision="bf16")[0]
    assert set(bf16) == set(fp32) == {"boxes", "scores", "labels"}
    assert bf16["boxes"].dtype == bf16["scores"].dtype == torch.float32 and bf16["labels"].dtype == torch.int64
    confident = fp32["scores"] > 0.5
    assert sorted(fp32["labels"][confident].tolist()) == [1, 2]  # the model did learn the scene
    kept = bf16["scores"] > 0.5
    # bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 per op): through the tiny network a
    # confident score moves by ~1e-3 and a 40-px box edge by ~0.1 px (seen: 5e-4, 0.06 px);
    # 0.01 and half a pixel leave that room and still catch a conversion that goes wrong
    assert fp32["labels"][confident].tolist() == bf16["labels"][kept].tolist()
    assert (fp32["scores"][confident] - bf16["scores"][kept]).abs().max() < 0.01
    assert (fp32["boxes"][confident] - bf16["boxes"][kept]).abs().max() < 0.5


def test_bf16_mask_rcnn_structure_and_dtypes():
    torch.manual_seed(0)
    model = build_model("mask_rcnn_tiny", num_classes=2, rpn_post_nms_top_n_test=20).eval()
    image, _ = _two_squares()
    out = model.predict([image, image[:, :96]], precision="bf16")
    assert len(out) == 2
    for det, height in zip(out, (128, 96)):
        assert set(det) == {"boxes", "scores", "labels", "masks"}
        assert det["boxes"].dtype == det["scores"].dtype == torch.float32
        assert det["masks"].dtype == torch.uint8 and det["masks"].shape[1:] == (height, 128)


def test_fp32_is_the_default_and_bad_precision_is_refused(trained_tiny):
    model, image, _ = trained_tiny
    default, fp32 = model.predict([image])[0], model.predict([image], precision="fp32")[0]
    assert torch.equal(default["boxes"], fp32["boxes"]) and torch.equal(default["scores"], fp32["scores"])
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        model.predict([image], precision="fp16")
