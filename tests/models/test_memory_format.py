"""The batch's memory format (DetectionTransform.memory_format) and the CPU defaults of predict."""

from __future__ import annotations

import pytest
import torch

from detkit.models import build_model, configure_kernels
from detkit.models.transform import DetectionTransform

CHANNELS_LAST = torch.channels_last


def images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 61 + 7 * i, 83 - 5 * i, generator=g) for i in range(n)]


@pytest.mark.parametrize(
    ("memory_format", "cpu_kernels", "channels_last"),
    [
        ("auto", True, True),
        ("auto", False, False),  # the CUDA layout on a CPU
        ("contiguous", True, False),
        ("channels_last", False, True),
    ],
)
def test_batch_layout(memory_format, cpu_kernels, channels_last):
    transform = DetectionTransform(min_size=64, max_size=None, memory_format=memory_format, cpu_kernels=cpu_kernels)
    batch = transform(images())
    assert batch.tensor.is_contiguous(memory_format=CHANNELS_LAST) == channels_last
    assert batch.tensor.is_contiguous() == (not channels_last)
    reference = DetectionTransform(min_size=64, max_size=None, memory_format="contiguous")(images())
    assert torch.equal(batch.tensor, reference.tensor)  # same values, other layout


def test_unknown_memory_format_is_refused():
    with pytest.raises(ValueError, match="memory_format must be one of"):
        DetectionTransform(memory_format="nhwc")


# torch.jit.trace on purpose (what the CPU fast paths do under tracing): torch deprecates jit tracing, and
# the tracer warns about the Python values it records as constants
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:FutureWarning", "ignore::torch.jit.TracerWarning")
def test_tracing_keeps_nchw():
    transform = DetectionTransform(min_size=32, max_size=None, memory_format="auto")
    seen = []

    def run(x):
        tensor = transform([x]).tensor
        seen.append(tensor.is_contiguous())
        return tensor

    torch.jit.trace(run, torch.rand(3, 40, 50), check_trace=False)
    assert seen == [True]


@pytest.mark.parametrize("name", ["faster_rcnn_tiny", "mask_rcnn_tiny"])
def test_cpu_defaults_predict_what_the_plain_path_predicts(name):
    """The CPU defaults (channels-last batches, folded eval-mode BNs, strided stem pool, threaded
    RoIAlign) against `configure_kernels(cpu_kernels=False, fold_bn=False)`: NCHW, unfolded, the
    kernels CUDA runs."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, min_size=96, max_size=128).eval()
    with torch.no_grad():
        for norm in model.modules():  # trained-like statistics: the eval BNs fold into their convs
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.running_mean.uniform_(-0.2, 0.2)
                norm.running_var.uniform_(0.5, 1.5)
                norm.weight.uniform_(0.8, 1.2)
        model.roi_heads.box_predictor.cls_score.bias[1] += 3.0  # detections to compare
        fast = model.predict(images(3))
        plain = configure_kernels(model, cpu_kernels=False, fold_bn=False).predict(images(3))
    for a, b in zip(fast, plain):
        assert a["boxes"].shape == b["boxes"].shape and len(a["boxes"]) > 0
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-4)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-2)
        assert torch.equal(a["labels"], b["labels"])


def test_training_step_runs_channels_last_with_the_same_losses(monkeypatch):
    torch.manual_seed(0)
    model = build_model("faster_rcnn_tiny", num_classes=3, min_size=96, max_size=128)
    targets = [
        {"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 3.0, 30.0, 33.0], [1.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([2, 3])},
    ]
    torch.manual_seed(1)
    losses = model(images(), targets)
    sum(losses.values()).backward()
    model.zero_grad()
    model.transform.memory_format = "contiguous"
    torch.manual_seed(1)
    plain = model(images(), targets)
    for key in losses:
        torch.testing.assert_close(losses[key], plain[key], rtol=1e-4, atol=1e-5)
