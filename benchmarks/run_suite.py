"""Run the performance issue's whole benchmark matrix and print one table (and save JSON).

    python benchmarks/run_suite.py --device cuda --out suite_cuda.json   # H100/H200 matrix
    python benchmarks/run_suite.py --device cpu                           # small CPU matrix
    python benchmarks/run_suite.py --device cpu --quick                   # smoke run, tiny images

Each benchmark runs in its own process (a crash or an out-of-memory error costs one row, not
the suite) with a time limit; rows that fail say why. GPU matrix (the targets of the issue):
training of Faster and Mask R-CNN R50-FPN at 800x1216, batch 2 fp32, batch 8 fp32, batch 8
bf16 and batch 8 bf16 channels-last; inference at batch 1 fp32 / bf16 and batch 8 fp32 / bf16;
the hot-path ops at batch 8; a profile of the bf16 training step. The CPU matrix is the one
in RESULTS.md (320x320).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ("faster_rcnn_r50_fpn", "mask_rcnn_r50_fpn")


def matrix(device: str, quick: bool) -> list[tuple[str, list[str]]]:
    """(script, arguments) of every row."""
    if quick:
        size = ["--height", "96", "--width", "128", "--iters", "1", "--warmup", "0"]
        return [
            ("bench_train.py", ["--device", device, "--batch-size", "1", *size]),
            ("bench_infer.py", ["--device", device, *size]),
            ("bench_ops.py", ["--device", device, "--height", "128", "--width", "192", "--iters", "1"]),
        ]
    if device == "cpu":
        return [
            ("bench_train.py", ["--device", "cpu"]),
            ("bench_infer.py", ["--device", "cpu"]),
            ("bench_ops.py", ["--device", "cpu", "--iters", "15"]),
        ]
    size = ["--device", device, "--height", "800", "--width", "1216"]
    rows = []
    for model in MODELS:
        train_settings = ((2, "fp32", []), (8, "fp32", []), (8, "bf16", []), (8, "bf16", ["--channels-last"]))
        for batch, precision, layout in train_settings:
            args = [*size, "--model", model, "--batch-size", str(batch), "--precision", precision, *layout]
            rows.append(("bench_train.py", [*args, "--iters", "10", "--warmup", "3"]))
        for batch, precision in ((1, "fp32"), (1, "bf16"), (8, "fp32"), (8, "bf16")):
            args = [*size, "--model", model, "--batch-size", str(batch), "--precision", precision]
            rows.append(("bench_infer.py", [*args, "--iters", "10", "--warmup", "3"]))
    rows.append(("bench_ops.py", ["--device", device, "--batch-size", "8", "--height", "800", "--width", "1216"]))
    rows.append(
        ("profile_step.py", [*size, "--batch-size", "8", "--precision", "bf16", "--steps", "5", "--warmup", "3"])
    )
    return rows


def run_row(script: str, args: list[str], timeout: float) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / script), *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"script": script, "args": args, "error": f"timed out after {timeout:.0f} s"}
    row = {"script": script, "args": args, "seconds": round(time.perf_counter() - start, 1)}
    reports = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not reports:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        row["error"] = f"exit {proc.returncode}: " + " | ".join(tail)
    else:
        row["report"] = json.loads(reports[-1])
    return row


def summary_lines(rows: list[dict]) -> list[str]:
    lines = [
        "| benchmark | model | batch | precision | detkit img/s | torchvision img/s | ratio | peak GiB dk / tv "
        "| checks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["script"].removesuffix(".py")
        if "error" in row:
            lines.append(f"| {name} {' '.join(row['args'])} | error: {row['error'][:200]} |||||||| ")
            continue
        rep = row["report"]
        if rep.get("kind") in ("train", "infer"):
            precision = rep["precision"] + (" NHWC" if rep.get("channels_last") else "")
            dk, tv = rep["detkit"], rep["torchvision"]
            mem = "-" if dk.get("peak_mem_gib") is None else f"{dk['peak_mem_gib']:.1f} / {tv['peak_mem_gib']:.1f}"
            checks = {k: v for k, v in rep.get("checks", {}).items() if k != "detections_per_image"}
            lines.append(
                f"| {rep['kind']} | {rep['model']} | {rep['batch_size']} | {precision} | {dk['img_per_s']:.1f} | "
                f"{tv['img_per_s']:.1f} | **{rep['ratio']:.2f}** | {mem} | {json.dumps(checks) if checks else ''} |"
            )
        elif name == "bench_ops":
            ops = ", ".join(f"{op} {v['speedup']:.2f}x" for op, v in rep.items())
            lines.append(f"| ops | - | - | - | - | - | {ops} | - | |")
        elif name == "profile_step":
            for impl in ("detkit", "torchvision"):
                if impl in rep:
                    r = rep[impl]
                    top = ", ".join(f"{o['op']} {o['share']:.0%}" for o in r["top_ops"][:4])
                    lines.append(
                        f"| profile {impl} | {rep['model']} | {rep['batch_size']} | {rep['precision']} | "
                        f"{r['wall_ms_per_step']:.0f} ms/step | outside ops {r['python_share']:.0%} | {top} | | |"
                    )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny images, one iteration: checks the suite runs")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per row")
    parser.add_argument("--out", type=Path, default=None, help="write all rows as JSON here")
    args = parser.parse_args(argv)

    rows = []
    for script, script_args in matrix(args.device, args.quick):
        print(f"running {script} {' '.join(script_args)}", file=sys.stderr, flush=True)
        rows.append(run_row(script, script_args, args.timeout))
    print("\n".join(summary_lines(rows)))
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))
    failed = sum("error" in r for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} rows ran", file=sys.stderr)
    print(json.dumps({"rows": len(rows), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
