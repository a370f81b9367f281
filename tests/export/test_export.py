"""Export to ONNX and torch.export: the files run (ONNX Runtime on the CPU, the .pt2 program) and
give eager detkit's detections on images of different sizes, batch 1 and batch 4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from export_parity import (  # noqa: E402
    assert_same_detections,
    detector,
    eager_predict,
    packed_to_list,
    random_size_images,
    shapes_images,
)

from detkit.export import OnnxDetector, check_exportable, export_onnx, export_program  # noqa: E402
from detkit.export.cli import export_main  # noqa: E402
from detkit.models import build_model  # noqa: E402

# 20 images: 8 shapes images (128 x 128, the training size) and 12 of other sizes
RANDOM_SIZES = [(96, 160), (200, 120), (77, 91), (256, 256), (130, 300), (64, 64), (181, 143), (320, 210)]
SAME_SIZE = (150, 210)  # 4 more images of one size, for a batch of 4 away from 128 x 128


def parity_images() -> list[list[np.ndarray]]:
    """Calls of the parity check: batches of 4 same-size images and single images (20 in all)."""
    shapes = shapes_images(8)
    others = random_size_images(RANDOM_SIZES)
    same = random_size_images([SAME_SIZE] * 4, seed=2)
    return [shapes[:4], shapes[4:], same] + [[img] for img in others]


def check_parity(model, onnx_path, program, calls, proposals_for=None) -> None:
    session = OnnxDetector(onnx_path)
    module = program.module()
    names = ["boxes", "scores", "labels", "batch_idx"] + (["mask_probs"] if session.has_mask else [])
    for images in calls:
        props = proposals_for(images) if proposals_for else None
        ref = eager_predict(model, images, props)
        where = f"{len(images)} x {images[0].shape[1:]}"
        got_ort = session.predict(images, proposals=props, batch_size=len(images))
        inputs = [torch.from_numpy(np.stack(images))]
        if props is not None:
            inputs += [
                torch.from_numpy(np.concatenate(props)),
                torch.cat([torch.full((len(p),), i, dtype=torch.int64) for i, p in enumerate(props)]),
            ]
        with torch.no_grad():
            got_pt2 = packed_to_list(module(*inputs), len(images), names)
        for i in range(len(images)):
            assert_same_detections(ref[i], got_ort[i], f"ONNX Runtime, {where}, image {i}")
            pt2 = dict(got_pt2[i])
            if session.has_mask:
                from detkit.export import paste_masks_numpy

                pt2["masks"] = paste_masks_numpy(pt2.pop("mask_probs"), pt2["boxes"], images[i].shape[1:])
            assert_same_detections(ref[i], pt2, f".pt2 program, {where}, image {i}")
    assert sum(len(d["labels"]) for d in got_ort) > 0, "the check needs detections"


def test_faster_rcnn_tiny_cli_export_runs_with_onnxruntime_and_matches_eager(tmp_path):
    model = detector("faster_rcnn_tiny")
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    onnx_path = tmp_path / "model.onnx"
    args = ["--model", "faster_rcnn_tiny", "--num-classes", "3", "--weights", str(weights)]
    assert export_main([*args, "--format", "onnx", "--output", str(onnx_path), "--max-detections", "50"]) == 0
    session = OnnxDetector(onnx_path)
    assert session.input_names == ["images"]
    assert session.output_names == ["boxes", "scores", "labels", "batch_idx"]
    assert session.metadata["detkit.max_detections"] == "50"
    model.roi_heads.detections_per_image = 50  # eager with the same cap
    program = export_program(model, max_detections=50)
    check_parity(model, onnx_path, program, parity_images())


@pytest.mark.slow
def test_mask_rcnn_tiny_exports_and_matches_eager(tmp_path):
    model = detector("mask_rcnn_tiny")
    program = export_program(model, tmp_path / "model.pt2")
    path = export_onnx(model, tmp_path / "model.onnx", program=program)
    loaded = torch.export.load(str(tmp_path / "model.pt2"))
    session = OnnxDetector(path)
    assert session.output_names[-1] == "mask_probs" and session.has_mask
    check_parity(model, path, loaded, parity_images())


@pytest.mark.slow
def test_fast_rcnn_tiny_takes_proposals_as_inputs_and_matches_eager(tmp_path):
    model = detector("fast_rcnn_tiny")
    program = export_program(model)
    path = export_onnx(model, tmp_path / "model.onnx", program=program)
    assert OnnxDetector(path).input_names == ["images", "proposals", "proposal_batch_idx"]
    rng = np.random.default_rng(0)

    def proposals_for(images):
        out = []
        for img in images:
            h, w = img.shape[1:]
            xy = rng.uniform(0, 1, (30, 2)) * [w * 0.6, h * 0.6]
            wh = rng.uniform(0.1, 1, (30, 2)) * [w * 0.4, h * 0.4] + 4
            out.append(np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1).astype(np.float32))
        return out

    calls = parity_images()
    check_parity(model, path, program, calls[:3] + calls[3:8], proposals_for)


def test_rcnn_refuses_with_the_reason():
    model = build_model("rcnn_tiny", num_classes=3).eval()
    with pytest.raises(ValueError, match="R-CNN cannot be exported: it warps every proposal"):
        check_exportable(model)
    with pytest.raises(ValueError, match="R-CNN cannot be exported"):
        export_program(model)


def test_export_needs_eval_mode():
    model = build_model("faster_rcnn_tiny", num_classes=3).train()
    from detkit.export import ExportableDetector

    with pytest.raises(ValueError, match="eval mode"):
        ExportableDetector(model)


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        export_main(["--model", "faster_rcnn_tiny", "--format", "pt2", "--output", "x.pt2", "--opset", "17"])
    assert "--opset applies to --format onnx only" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="checkpoint not found: nope.ckpt"):
        export_main(["--checkpoint", "nope.ckpt", "--output", "x.onnx"])
