"""`detkit predict --onnx` vs `--checkpoint` as whole commands (new processes), and what each ONNX session choice costs.

    python benchmarks/bench_predict_command.py --checkpoint CK --onnx MODEL.onnx --input IMAGES/ [--rounds 3]

`MODEL.onnx` is `detkit export --checkpoint CK`'s output. Each round runs, alternating: the
checkpoint; the ONNX file with detkit's session options (threads sleep between operators, torch on
one thread); the same with ONNX Runtime's spinning threads; the same with torch on its default
threads. Drawings are written, as a user's run does. Prints the median seconds of each and their
ratio to the checkpoint's (> 1: faster than --checkpoint), and JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = {  # name -> code run before detkit's main in the command's process
    "checkpoint": "",
    "onnx": "",
    "onnx, threads spin": "import detkit.export.runner as r; r.SESSION_CONFIG.clear(); ",
    "onnx, torch default threads": (
        "import contextlib, detkit.cli.predict as p; p._torch_single_threaded = contextlib.nullcontext; "
    ),
}


def command(variant: str, args, output: str) -> list[str]:
    model = ["--checkpoint", args.checkpoint] if variant == "checkpoint" else ["--onnx", args.onnx]
    argv = ["predict", *model, "--input", args.input, "--output", output]
    code = f"{VARIANTS[variant]}import sys; from detkit.cli import main; sys.exit(main({argv!r}))"
    return [sys.executable, "-c", code]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--input", required=True, help="image folder")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        output = f"{tmp}/out"
        for _ in range(args.rounds):
            for variant in VARIANTS:
                shutil.rmtree(output, ignore_errors=True)
                start = time.perf_counter()
                run = subprocess.run(command(variant, args, output), capture_output=True, text=True)
                times[variant].append(time.perf_counter() - start)
                if run.returncode != 0:
                    last = (run.stderr.strip().splitlines() or ["no output"])[-1]
                    raise SystemExit(f"{variant}: detkit predict failed (exit {run.returncode}): {last}")
    seconds = {v: statistics.median(t) for v, t in times.items()}
    for variant, runs in times.items():
        ratio = seconds["checkpoint"] / seconds[variant]
        print(f"{variant:<30} median {seconds[variant]:7.2f} s  {ratio:5.2f}x --checkpoint  runs "
              f"{[round(t, 2) for t in runs]}")  # fmt: skip
    print(json.dumps({"seconds": times, "median": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
