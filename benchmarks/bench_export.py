"""Exported Faster R-CNN R50-FPN on ONNX Runtime (CPU, float32 and int8) vs eager detkit vs eager torchvision,
and the exported `faster_rcnn_tiny` vs eager detkit.

    python benchmarks/bench_export.py                       # batch 1 and 4, 512x512 and 800x1216; tiny 128x128
    python benchmarks/bench_export.py --sizes 512x512 --batch-sizes 1 --iters 10 --tiny-size 0
    python benchmarks/bench_export.py --profile-int8 /tmp/prof   # + ONNX Runtime's profile of the int8 model

One process, same weights (random, no downloads; torchvision's layout loaded into detkit) and
the same images. Per size the models are built with min_size / max_size equal to the image
sides (no resizing, as bench_infer) and detkit's model is exported once to ONNX (cached in
--workdir). A biased class logit makes about 100 detections per image survive the 0.05 score
threshold, as with trained weights. The ONNX Runtime detections are checked against eager
detkit (counts, scores). The int8 model is the float32 export quantized by
`detkit.export.quantize.quantize_onnx` (as `detkit export --quantize int8`), calibrated on
--calibration-count random images other than the timed ones (random weights: the speed, not the
accuracy, is measured here; docs/export.md has the AP of a trained model). Ratios > 1: ONNX
Runtime faster. ONNX Runtime runs with detkit's session entries (`detkit.export.runner.SESSION_CONFIG`:
threads sleep between operators); `--spin` measures ONNX Runtime's own default (spinning threads).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from _pairs import build_pair, make_inputs, time_alternating
from _roofline import count_flops, format_peaks, format_roofline, measure_peaks, roofline

from detkit.export import OnnxDetector, export_onnx
from detkit.export.quantize import quantize_onnx
from detkit.export.runner import SESSION_CONFIG
from detkit.models import build_model


def _pairs_of(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")]


def ort_peak(precision: str, n: int = 2048, min_seconds: float = 1.0) -> float:
    """Best GFLOP/s (GOP/s for int8) of ONNX Runtime's n x n matrix product in this process: MatMul
    (float32) or MatMulInteger (uint8 x int8 -> int32, the product the int8 convolutions run on).

    torch's CPU int8 product (`torch._int_mm`, the `int8` of `_roofline.measure_peak`) is not the
    kernel ONNX Runtime uses (0.6 GOP/s on the AVX2 machine), so the int8 side's peak is this one."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if precision == "int8":
        a = rng.integers(0, 256, (n, n), dtype=np.uint8)
        b = numpy_helper.from_array(rng.integers(-64, 64, (n, n), dtype=np.int8), "b")
        node, a_type, c_type = (
            helper.make_node("MatMulInteger", ["a", "b"], ["c"]),
            TensorProto.UINT8,
            TensorProto.INT32,
        )
    else:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "b")
        node, a_type, c_type = helper.make_node("MatMul", ["a", "b"], ["c"]), TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "product",
        [helper.make_tensor_value_info("a", a_type, [n, n])],
        [helper.make_tensor_value_info("c", c_type, [n, n])],
        initializer=[b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    session.run(None, {"a": a})
    best, spent = float("inf"), 0.0
    while spent < min_seconds:
        start = time.perf_counter()
        session.run(None, {"a": a})
        seconds = time.perf_counter() - start
        best, spent = min(best, seconds), spent + seconds
    return 2 * n**3 / best / 1e9


SPIN = {"session.intra_op.allow_spinning": "1", "session.inter_op.allow_spinning": "1"}  # ONNX Runtime's default

SIDE_PRECISIONS = {"onnxruntime_int8": "int8", "onnxruntime": "fp32", "detkit": "fp32", "torchvision": "fp32"}


def measured_peaks() -> dict:
    """Peaks of this moment (a shared machine's load changes): torch's fp32 product for the float32
    sides, ONNX Runtime's int8 product for the int8 side (torch's int8 kept as `torch_int8`)."""
    peaks = measure_peaks(torch.device("cpu"), ("fp32", "int8"))
    peaks["torch_int8"], peaks["int8"] = peaks["int8"], ort_peak("int8")
    print(f"  {format_peaks(peaks)}; ONNX Runtime: fp32 {ort_peak('fp32'):.1f}, int8 (MatMulInteger u8 x s8, "
          f"the int8 side's peak) {peaks['int8']:.1f}", flush=True)  # fmt: skip
    return peaks


def run_size(height: int, width: int, args) -> list[dict]:
    device = torch.device("cpu")
    dk, tv = build_pair("faster_rcnn_r50_fpn", min_size=min(height, width), max_size=max(height, width), device=device)
    with torch.no_grad():  # trained-like: one class dominates, ~100 detections per image
        for model in (dk, tv):
            model.roi_heads.box_predictor.cls_score.bias[1] += 4.0
    dk.eval()
    tv.eval()
    path = os.path.join(args.workdir, f"faster_rcnn_r50_fpn_{height}x{width}.onnx")
    if not os.path.isfile(path):
        start = time.perf_counter()
        export_onnx(dk, path)
        print(f"exported {path} in {time.perf_counter() - start:.0f} s", flush=True)
    int8_path = path.replace(".onnx", "_int8.onnx")
    if not os.path.isfile(int8_path):
        start = time.perf_counter()
        calibration, _ = make_inputs(args.calibration_count, height, width, device=device, with_masks=False, seed=1)
        quantize_onnx(path, int8_path, [img.numpy() for img in calibration])
        print(f"quantized {int8_path} in {time.perf_counter() - start:.0f} s", flush=True)
    config = SPIN if args.spin else None
    session = OnnxDetector(path, threads=args.threads, config=config)
    session_int8 = OnnxDetector(int8_path, threads=args.threads, config=config)
    rows = []
    for batch_size in args.batch_sizes:
        images, _ = make_inputs(batch_size, height, width, device=device, with_masks=False)
        batch = torch.stack(images).numpy()
        with torch.no_grad():
            ref = dk.predict(images)
        got = session.predict(list(batch), batch_size=batch_size)
        got_int8 = session_int8.predict(list(batch), batch_size=batch_size)
        same_counts = [len(r["scores"]) for r in ref] == [len(g["scores"]) for g in got]
        score_diff = (
            max(
                (float(np.abs(np.sort(r["scores"].numpy()) - np.sort(g["scores"])).max()) for r, g in zip(ref, got)),
                default=0.0,
            )
            if same_counts
            else float("nan")
        )

        def ort_step(batch=batch):
            session.run(batch)

        def ort_int8_step(batch=batch):
            session_int8.run(batch)

        def detkit_step(images=images):
            with torch.no_grad():
                dk.predict(images)

        def torchvision_step(images=images):
            with torch.no_grad():
                tv(images)

        steps = {
            "onnxruntime": ort_step,
            "onnxruntime_int8": ort_int8_step,
            "detkit": detkit_step,
            "torchvision": torchvision_step,
        }
        result = time_alternating(steps, iters=args.iters, warmup=args.warmup, device=device)
        s = {k: v["seconds"] for k, v in result.items()}
        with torch.no_grad():  # the same work on every side: detkit's eager predict, counted once
            flops = count_flops(dk.predict, images)
        peaks = measured_peaks()  # right after the timed runs, under the same load
        row = {
            "size": f"{height}x{width}",
            "batch_size": batch_size,
            "seconds": s,
            "ort_vs_torchvision": s["torchvision"] / s["onnxruntime"],
            "ort_vs_detkit": s["detkit"] / s["onnxruntime"],
            "detkit_vs_torchvision": s["torchvision"] / s["detkit"],
            "int8_vs_torchvision": s["torchvision"] / s["onnxruntime_int8"],
            "int8_vs_ort_fp32": s["onnxruntime"] / s["onnxruntime_int8"],
            "detections_per_image": [len(g["scores"]) for g in got],
            "int8_detections_per_image": [len(g["scores"]) for g in got_int8],
            "same_counts_as_eager": same_counts,
            "max_score_diff": score_diff,
            "roofline": {k: roofline(flops, s[k], peaks[p]) for k, p in SIDE_PRECISIONS.items()},
        }
        print(
            f"| {row['size']} | {batch_size} | {s['onnxruntime_int8']:.3f} | {s['onnxruntime']:.3f} "
            f"| {s['detkit']:.3f} | {s['torchvision']:.3f} | {row['int8_vs_torchvision']:.2f}x "
            f"| {row['int8_vs_ort_fp32']:.2f}x "
            f"| {row['ort_vs_torchvision']:.2f}x | {row['ort_vs_detkit']:.2f}x | fp32 counts equal: {same_counts}, "
            f"max score diff {score_diff:.1e} |",
            flush=True,
        )
        for side, precision in SIDE_PRECISIONS.items():
            print(f"  {format_roofline(side, flops, s[side], peaks[precision], precision)}", flush=True)
        rows.append(row)
        if args.profile_int8:
            print(profile_summary(int8_path, batch, args, f"{height}x{width}_b{batch_size}"), flush=True)
    return rows


def run_tiny(side: int, args) -> list[dict]:
    """`faster_rcnn_tiny` (random weights, a biased class logit: many detections) exported, ONNX Runtime
    float32 vs eager detkit on `side` x `side` images, batch sizes as the R50-FPN rows."""
    torch.manual_seed(0)
    model = build_model("faster_rcnn_tiny", num_classes=3, min_size=side, max_size=side).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] += 4.0
    path = os.path.join(args.workdir, f"faster_rcnn_tiny_{side}.onnx")
    if not os.path.isfile(path):
        export_onnx(model, path)
    session = OnnxDetector(path, threads=args.threads, config=SPIN if args.spin else None)
    print("| model | size | batch | ORT fp32 s | detkit eager s | ORT fp32 / detkit | check |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for batch_size in args.batch_sizes:
        images, _ = make_inputs(batch_size, side, side, device=torch.device("cpu"), with_masks=False)
        batch = torch.stack(images).numpy()
        with torch.no_grad():
            ref = model.predict(images)
        got = session.predict(list(batch), batch_size=batch_size)
        same_counts = [len(r["scores"]) for r in ref] == [len(g["scores"]) for g in got]

        def detkit_step(images=images):
            with torch.no_grad():
                model.predict(images)

        steps = {"onnxruntime": lambda batch=batch: session.run(batch), "detkit": detkit_step}
        s = {k: v["seconds"] for k, v in time_alternating(steps, iters=args.iters, warmup=args.warmup,
                                                          device=torch.device("cpu")).items()}  # fmt: skip
        row = {"model": "faster_rcnn_tiny", "size": f"{side}x{side}", "batch_size": batch_size, "seconds": s,
               "ort_vs_detkit": s["detkit"] / s["onnxruntime"], "same_counts_as_eager": same_counts}  # fmt: skip
        print(f"| faster_rcnn_tiny | {row['size']} | {batch_size} | {s['onnxruntime']:.4f} | {s['detkit']:.4f} "
              f"| {row['ort_vs_detkit']:.2f}x | counts equal: {same_counts} |", flush=True)  # fmt: skip
        rows.append(row)
    return rows


def profile_summary(path: str, batch: np.ndarray, args, tag: str, top: int = 12) -> str:
    """ONNX Runtime's profile of `args.iters` runs of `path` on `batch`: the op types and nodes with most time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(args.profile_int8, f"int8_{tag}")
    if args.threads:
        options.intra_op_num_threads = args.threads
    for key, value in (SPIN if args.spin else SESSION_CONFIG).items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    for _ in range(args.warmup + args.iters):
        session.run(None, {"images": batch})
    with open(session.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    by_op: dict[str, float] = {}
    by_node: dict[str, float] = {}
    for e in events:
        by_op[e["args"]["op_name"]] = by_op.get(e["args"]["op_name"], 0.0) + e["dur"]
        node = f"{e['name'][: -len('_kernel_time')]} ({e['args']['op_name']})"
        by_node[node] = by_node.get(node, 0.0) + e["dur"]
    total = sum(by_op.values()) or 1.0
    runs = args.warmup + args.iters
    lines = [f"int8 profile {tag}: {total / runs / 1e3:.1f} ms of kernels per run; share by op type:"]
    lines += [f"  {op}: {t / total:.1%}" for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]]
    lines.append("top nodes:")
    lines += [f"  {n}: {t / runs / 1e3:.2f} ms" for n, t in sorted(by_node.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_pairs_of, default=_pairs_of("512x512,800x1216"), help="HxW[,HxW...]")
    parser.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument(
        "--spin", action="store_true", help="ONNX Runtime's default: threads spin between operators (detkit's sleep)"
    )
    parser.add_argument("--tiny-size", type=int, default=128, help="faster_rcnn_tiny's image side (0: skip it)")
    parser.add_argument("--calibration-count", type=int, default=8, help="random images calibrating the int8 model")
    parser.add_argument("--profile-int8", metavar="DIR", help="write ONNX Runtime profiles of the int8 model here")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "detkit_bench_export"))
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.workdir, exist_ok=True)
    if args.profile_int8:
        os.makedirs(args.profile_int8, exist_ok=True)
    print(
        f"faster_rcnn_r50_fpn, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
        f"{args.iters} alternating runs (seconds per call)"
    )
    print(
        "| size | batch | ORT int8 s | ORT fp32 s | detkit eager s | torchvision eager s | int8 / torchvision "
        "| int8 / ORT fp32 | ORT fp32 / torchvision | ORT fp32 / detkit | check |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for height, width in args.sizes:
        rows += run_size(height, width, args)
    if args.tiny_size:
        rows += run_tiny(args.tiny_size, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
