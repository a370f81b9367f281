"""Every benchmark script runs end to end on tiny inputs and reports what it promises.

No timing is asserted (times depend on the machine); the point is that the scripts
people use to compare detkit with torchvision / pycocotools / OpenCV keep working.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_bench(script: str, *args: str, tmp_path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last)


def test_bench_train_and_infer(tmp_path):
    small = ("--height", "96", "--width", "128", "--iters", "1", "--warmup", "0")
    train = run_bench("bench_train.py", *small, "--batch-size", "1", tmp_path=tmp_path)
    infer = run_bench("bench_infer.py", *small, tmp_path=tmp_path)
    for report in (train, infer):
        assert report["ratio"] > 0 and report["detkit"]["img_per_s"] > 0 and report["torchvision"]["img_per_s"] > 0
        assert report["image_size"] == [96, 128]
        # the roofline line: FLOPs of one call, fraction of the peak measured in the same process
        assert report["peaks"]["fp32"] > 0
        for side in ("detkit", "torchvision"):
            limits = report[side]["roofline"]
            assert limits["gflops_per_call"] > 1 and 0 < limits["fraction_of_peak"]
    assert train["detkit"]["roofline"]["gflops_per_call"] > 2 * infer["detkit"]["roofline"]["gflops_per_call"]


def test_bench_infer_detkit_bf16_against_both_fp32(tmp_path):
    small = ("--height", "96", "--width", "128", "--iters", "1", "--warmup", "0")
    report = run_bench("bench_infer.py", *small, "--detkit-precision", "bf16", tmp_path=tmp_path)
    assert report["detkit"]["precision"] == "bf16" and report["detkit fp32"]["precision"] == "fp32"
    assert report["torchvision"]["precision"] == "fp32" and report["peaks"]["bf16"] > 0
    assert report["checks"]["detkit_bf16_vs_fp32"]["detections_per_image"] == [100]


def test_bench_infer_plain_is_torchvision_arithmetic(tmp_path):
    """--detkit-plain (NCHW, unfolded BNs) gives torchvision's scores exactly; the CPU defaults within 1e-3."""
    small = ("--height", "96", "--width", "128", "--iters", "1", "--warmup", "0")
    plain = run_bench("bench_infer.py", *small, "--detkit-plain", tmp_path=tmp_path)
    default = run_bench("bench_infer.py", *small, tmp_path=tmp_path)
    assert plain["detkit_plain"] and plain["checks"]["max_score_diff"] == 0.0
    assert not default["detkit_plain"] and default["checks"]["scores_close"]


def test_compare_ops_cpu_times_the_three_calls(tmp_path):
    args = ["--height", "96", "--width", "128", "--iters", "1", "--top", "3"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_ops_cpu.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "detkit-plain: 100 detections, max |score - torchvision's| 0" in proc.stdout, proc.stdout
    assert "aten op" in proc.stdout


def test_bench_ops(tmp_path):
    report = run_bench("bench_ops.py", "--height", "128", "--width", "192", "--iters", "1", tmp_path=tmp_path)
    backward = {f"roi_align_backward_{case}" for case in ("s4_large", "s8_large", "s8_fpn", "s16_fpn")}
    assert set(report) == {"rpn_targets", "rpn_filter", "nms", "roi_align", "paste_masks", *backward}
    assert all(row["speedup"] > 0 for row in report.values())


def test_profile_step(tmp_path):
    args = ("--model", "faster_rcnn_tiny", "--height", "64", "--width", "64", "--steps", "1", "--warmup", "0")
    report = run_bench("profile_step.py", *args, tmp_path=tmp_path)
    result = report["detkit"]
    assert result["wall_ms_per_step"] > 0 and 0 <= result["python_share"] <= 1
    assert result["top_ops"] and all(row["op"] for row in result["top_ops"])


def test_bench_coco_eval(tmp_path):
    report = run_bench("bench_coco_eval.py", "--images", "20", "--classes", "5", "--whole-command", tmp_path=tmp_path)
    assert report["stats_max_abs_diff"] <= 1e-9  # the script also exits 1 otherwise (the command's stats too)
    assert report["pycocotools_s"] > 0 and report["detkit_faster_coco_eval_s"] > 0
    assert report["detkit_evaluate_command_s"] > 0 and report["detkit_evaluate_command_cpu_s"] > 0


def test_bench_analyze(tmp_path):
    report = run_bench("bench_analyze.py", "--images", "20", "--classes", "5", "--rounds", "1", tmp_path=tmp_path)
    assert report["images"] == 20 and report["seconds"]["evaluate"][0] > 0 and report["seconds"]["analyze"][0] > 0
    assert report["ratio"] == pytest.approx(report["seconds"]["analyze"][0] / report["seconds"]["evaluate"][0], 1e-3)


def test_bench_predict_command(tmp_path):
    import importlib.util

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_checkpoints import save_tiny_mask_checkpoint

    spec = importlib.util.spec_from_file_location("_runner_tests", ROOT / "tests" / "export" / "test_runner.py")
    runner_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner_tests)
    runner_tests._fake_export(tmp_path / "m.onnx", "category_ids")  # constant detections: the command only
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    checkpoint = save_tiny_mask_checkpoint(tmp_path / "m.ckpt")
    args = ("--checkpoint", str(checkpoint), "--onnx", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "in"))
    report = run_bench("bench_predict_command.py", *args, "--rounds", "1", tmp_path=tmp_path)
    assert set(report["median"]) == {"checkpoint", "onnx", "onnx, threads spin", "onnx, torch default threads"}
    assert all(s > 0 for s in report["median"].values())


def test_bench_selective_search(tmp_path):
    args = ("--num-images", "4", "--repeats", "1", "--resize-to", "none", "--data-root", str(tmp_path / "data"))
    report = run_bench("bench_selective_search.py", *args, tmp_path=tmp_path)
    rows = report["rows"]
    # full size gives OpenCV's own boxes: the same recall
    assert rows["detkit r=None"]["R@0.5"] == rows["opencv"]["R@0.5"]
    assert rows["detkit r=None"]["AR@1000"] == pytest.approx(rows["opencv"]["AR@1000"])


def test_run_suite_quick_prints_one_table(tmp_path):
    out = tmp_path / "suite.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_suite.py"), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["script"] for r in rows] == ["bench_train.py", "bench_infer.py", "bench_ops.py"]
    assert all("report" in r for r in rows)
    assert "| train | faster_rcnn_r50_fpn | 1 | fp32 |" in proc.stdout


def test_run_suite_reports_a_failing_row_and_goes_on():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_suite
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    row = run_suite.run_row("bench_train.py", ["--model", "no_such_model"], timeout=300)
    assert "error" in row and "exit 2" in row["error"]
    assert "error" in run_suite.summary_lines([row])[-1]
