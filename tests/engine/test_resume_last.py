"""`detkit fit --ckpt_path last` finds last.ckpt of the previous run (versioned logger folders)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ckpt_path_last_resumes_from_the_previous_version(tmp_path):
    args = [
        sys.executable, "-m", "detkit.cli", "fit", "--config", str(ROOT / "configs/shapes_faster_rcnn_tiny.yaml"),
        "--data.root", str(tmp_path / "shapes"), "--data.num_train", "16", "--data.num_val", "4",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    first = subprocess.run([*args, "--trainer.max_steps", "3"], capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(
        [*args, "--trainer.max_steps", "5", "--ckpt_path", "last"], capture_output=True, text=True, cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr[-2000:]
    previous = tmp_path / "runs/shapes_faster_rcnn_tiny/version_0/checkpoints/last.ckpt"
    assert f"resuming from {previous}" in second.stderr
    resumed = torch.load(tmp_path / "runs/shapes_faster_rcnn_tiny/version_1/checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 5
