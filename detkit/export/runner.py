"""Run an exported detector with ONNX Runtime: numpy in, per-image detections out (no torch needed).

    detector = OnnxDetector("model.onnx")
    dets = detector.predict([img_a, img_b])  # float32 [3, H, W] in 0..1, any sizes
    dets[0]["boxes"], dets[0]["scores"], dets[0]["labels"], dets[0].get("masks"), dets[0].get("keypoints")

Images of the same size run as one batch; the packed outputs are split per image with
`batch_idx` and, for Mask R-CNN, the mask probabilities are pasted into image-sized uint8
masks with `paste_masks_numpy`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from detkit.export.masks import paste_masks_numpy

__all__ = ["OnnxDetector", "OnnxPredictor", "split_packed"]


def split_packed(outputs: dict[str, np.ndarray], num_images: int) -> list[dict[str, np.ndarray]]:
    """Packed outputs (rows with `batch_idx`) -> one dict per image, rows kept in order."""
    idx = outputs["batch_idx"]
    per_image = []
    for i in range(num_images):
        rows = np.nonzero(idx == i)[0]
        per_image.append({k: v[rows] for k, v in outputs.items() if k != "batch_idx"})
    return per_image


SESSION_CONFIG = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
"""ONNX Runtime session entries detkit sets: worker threads sleep between operators instead of
spinning. Spinning threads hold every core between calls; on a machine where anything else runs
(the caller's own image decoding and drawing included) they made `detkit predict --onnx` 1.5x slower
than eager PyTorch (docs/export.md, "Session options")."""


class OnnxDetector:
    """An exported detkit ONNX file in an ONNX Runtime session.

    Args:
        path: the .onnx file from `detkit export` / `export_onnx`.
        providers: ONNX Runtime execution providers (default CPU).
        threads: intra-op threads (default: ONNX Runtime's choice, one per physical core).
        config: ONNX Runtime session config entries, over `SESSION_CONFIG`
            (e.g. `{"session.intra_op.allow_spinning": "1"}` spins again).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        config: dict[str, str] | None = None,
    ):
        import onnxruntime as ort

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        for key, value in {**SESSION_CONFIG, **(config or {})}.items():
            options.add_session_config_entry(key, value)
        try:
            self.session = ort.InferenceSession(
                path, sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.input_names[0] != "images" or self.output_names[:4] != ["boxes", "scores", "labels", "batch_idx"]:
            raise ValueError(
                f"{path}: not a detkit export (inputs {self.input_names}, outputs {self.output_names}); "
                "expected input 'images' and outputs boxes, scores, labels, batch_idx"
            )
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.has_masks = "mask_probs" in self.output_names
        self.has_keypoints = "keypoints" in self.output_names
        self.requires_proposals = "proposals" in self.input_names
        self.mask_threshold = float(self.metadata.get("detkit.mask_threshold") or 0.5)
        self.quantization = self.metadata.get("detkit.quantization") or None  # "int8" from `detkit export --quantize`

    @property
    def description(self) -> str:
        """What runs: "ONNX Runtime, float32" or "ONNX Runtime, int8 (calibrated on N images)"."""
        if self.quantization is None:
            return "ONNX Runtime, float32"
        count = self.metadata.get("detkit.calibration_images")
        return f"ONNX Runtime, {self.quantization}" + (f" (calibrated on {count} images)" if count else "")

    @property
    def class_names(self) -> list[str] | None:
        names = self.metadata.get("detkit.class_names")
        return json.loads(names) if names else None

    def run(
        self, images: np.ndarray, proposals: np.ndarray | None = None, proposal_batch_idx: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """One call on a batch float32 [N, 3, H, W] -> the packed outputs by name."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be float32 [N, 3, H, W], got shape {images.shape}")
        feed = {"images": images}
        if self.requires_proposals:
            if proposals is None or proposal_batch_idx is None:
                raise ValueError("this model has no RPN: pass proposals [P, 4] and proposal_batch_idx [P]")
            feed["proposals"] = np.ascontiguousarray(proposals, dtype=np.float32).reshape(-1, 4)
            feed["proposal_batch_idx"] = np.ascontiguousarray(proposal_batch_idx, dtype=np.int64).reshape(-1)
        return dict(zip(self.output_names, self.session.run(None, feed)))

    def predict(
        self,
        images: Sequence[np.ndarray],
        *,
        proposals: Sequence[np.ndarray] | None = None,
        batch_size: int = 4,
        paste_masks: bool = True,
    ) -> list[dict[str, np.ndarray]]:
        """Per image (float32 [3, H, W] in 0..1, any sizes): `boxes` [D, 4], `scores`, `labels` and,
        for Mask R-CNN, `masks` uint8 [D, H, W] (or `mask_probs` [D, 28, 28] without `paste_masks`), for
        Keypoint R-CNN `keypoints` [D, Kp, 3] (x, y, 1) and `keypoints_scores` [D, Kp].

        Same-size images run together, at most `batch_size` per call. `proposals`: one [P_i, 4]
        array per image (input pixels) for Fast R-CNN.
        """
        images = [np.asarray(img, dtype=np.float32) for img in images]
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(f"images[{i}] must be float32 [3, H, W], got shape {img.shape}")
        if self.requires_proposals and (proposals is None or len(proposals) != len(images)):
            raise ValueError("this model has no RPN: pass one proposals array [P_i, 4] per image")
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[1:], []).append(i)
        results: list[dict | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), max(1, batch_size)):
                chunk = indices[start : start + batch_size]
                props = idx = None
                if self.requires_proposals:
                    boxes = [np.asarray(proposals[i], dtype=np.float32).reshape(-1, 4) for i in chunk]
                    props = np.concatenate(boxes)
                    idx = np.concatenate([np.full(len(b), j, dtype=np.int64) for j, b in enumerate(boxes)])
                out = self.run(np.stack([images[i] for i in chunk]), props, idx)
                for i, det in zip(chunk, split_packed(out, len(chunk))):
                    if self.has_masks and paste_masks:
                        size = images[i].shape[1:]
                        det["masks"] = paste_masks_numpy(det.pop("mask_probs"), det["boxes"], size, self.mask_threshold)
                    results[i] = det
        return results


class OnnxPredictor:
    """An `OnnxDetector` behind the eager detector's calling convention, for `detkit predict --onnx`.

    `predict(list of float Tensor[3, H, W])` returns one dict of tensors per image (`boxes`,
    `scores`, `labels` 1..num_classes, `masks` uint8 [D, H, W] for Mask R-CNN, `keypoints` [D, Kp, 3] and
    `keypoints_scores` [D, Kp] for Keypoint R-CNN), like
    `model.predict`. `label_to_category_id` and `class_names` come from the file's metadata
    (written by `detkit export --checkpoint`); labels exported as category ids are mapped back.
    A Fast R-CNN export (`requires_proposals`) takes `proposals=` as the eager model does;
    `proposal_settings` are the selective-search settings of its training (None if not recorded).
    ONNX Runtime runs on the CPU: `to()` is a no-op.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 4):
        self.detector = OnnxDetector(path)
        self.batch_size = batch_size
        self.requires_proposals = self.detector.requires_proposals
        meta = self.detector.metadata
        self.proposal_settings = json.loads(meta["detkit.proposals"]) if meta.get("detkit.proposals") else None
        self.num_classes = int(meta.get("detkit.num_classes", 0))
        mapping = json.loads(meta["detkit.label_to_category_id"]) if meta.get("detkit.label_to_category_id") else None
        self.label_to_category_id = {int(k): int(v) for k, v in mapping.items()} if mapping else None
        self._to_label = None
        if meta.get("detkit.labels") == "category_ids" and self.label_to_category_id:
            self._to_label = {cid: label for label, cid in self.label_to_category_id.items()}

    @property
    def class_names(self) -> list[str] | None:
        return self.detector.class_names

    @property
    def skeleton(self) -> list[tuple[int, int]] | None:
        """0-based keypoint index pairs joined in drawings (None when the export does not record them)."""
        layout = self.detector.metadata.get("detkit.keypoints")
        return [(int(a), int(b)) for a, b in json.loads(layout)["skeleton"]] if layout else None

    @property
    def description(self) -> str:
        return self.detector.description

    def to(self, device) -> OnnxPredictor:
        return self

    def eval(self) -> OnnxPredictor:
        return self

    def predict(self, images, *, proposals=None) -> list[dict]:
        import torch

        arrays = [img.detach().cpu().float().numpy() for img in images]
        if proposals is not None:
            proposals = [np.asarray(p.detach().cpu() if hasattr(p, "detach") else p, np.float32) for p in proposals]
        out = []
        for det in self.detector.predict(arrays, proposals=proposals, batch_size=self.batch_size):
            labels = det["labels"]
            if self._to_label is not None:
                labels = np.array([self._to_label[int(c)] for c in labels], dtype=np.int64)
            item = {
                "boxes": torch.from_numpy(det["boxes"]),
                "scores": torch.from_numpy(det["scores"]),
                "labels": torch.from_numpy(labels.astype(np.int64)),
            }
            for key in ("masks", "keypoints", "keypoints_scores"):
                if key in det:
                    item[key] = torch.from_numpy(det[key])
            out.append(item)
        return out
