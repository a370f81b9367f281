"""The result line of `detkit fit`'s summary names every evaluated kind: boxes, masks, keypoints."""

from types import SimpleNamespace

import torch

from detkit.cli.fit_summary import fit_summary


def _trainer(metrics):
    return SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()}, log_dir=None,
                           checkpoint_callback=SimpleNamespace(best_model_path=""))  # fmt: skip


def test_result_line_per_kind():
    lines = fit_summary(_trainer({"val/AP": 0.5, "val/AP50": 0.75}), None, 61).splitlines()
    assert lines == ["detkit fit: done in 1 min 1 s.", "Last validation: box AP 0.500 (AP50 0.750)."]
    keypoints = _trainer({"val/AP": 0.841, "val/AP50": 0.984, "val/kp_AP": 0.866})
    assert fit_summary(keypoints, None, 1).splitlines()[1] == (
        "Last validation: box AP 0.841 (AP50 0.984), keypoint AP 0.866."
    )
    masks = _trainer({"val/AP": 0.25, "val/segm_AP": 0.125})
    assert fit_summary(masks, None, 1).splitlines()[1] == "Last validation: box AP 0.250, mask AP 0.125."
