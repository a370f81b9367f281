"""Command-line entry point (`detkit`).

    detkit fit|validate|test|predict --config configs/X.yaml [--key value ...]   (LightningCLI)
    detkit predict --checkpoint CKPT --input IMG_OR_DIR --output DIR              (image files)
    detkit evaluate --annotations GT.json --predictions RESULTS.json              (COCO metrics)
    detkit proposals --annotations A.json --image-root DIR --output CACHE          (selective search)
    detkit --version

Errors such as missing files end with a one-line message on stderr and exit status 2
(set DETKIT_DEBUG=1 to see the traceback).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

USAGE = """usage: detkit <command> [options]

commands:
  fit         train a model:            detkit fit --config configs/shapes_faster_rcnn_tiny.yaml
  validate    evaluate a checkpoint:    detkit validate --config CONFIG --ckpt_path CKPT
  test        same on the test loader:  detkit test --config CONFIG --ckpt_path CKPT
  predict     image files:              detkit predict --checkpoint CKPT --input IMG_OR_DIR --output DIR
              (COCO results json; --annotations GT.json for its image ids)
              or the config's data:     detkit predict --config CONFIG --ckpt_path CKPT
  evaluate    COCO metrics of a json:   detkit evaluate --annotations GT.json --predictions RES.json
  proposals   selective-search cache:   detkit proposals --annotations A.json --image-root DIR --output CACHE

`detkit <command> --help` lists a command's options; --version prints the version.
"""

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _fail(command: str, exc: BaseException) -> int:
    if os.environ.get("DETKIT_DEBUG"):
        raise exc
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"detkit {command}: error: {message}", file=sys.stderr)
    return 2


def _run_proposals(argv: list[str]) -> int:
    """`detkit proposals`: precompute selective-search proposals (detkit.proposals.precompute)."""
    from detkit.proposals.precompute import main as precompute_main

    return int(precompute_main(argv, prog="detkit proposals") or 0)


def _predicts_files(rest: list[str]) -> bool:
    """`detkit predict` on image files (--checkpoint / --input; also --help without a config), else LightningCLI."""
    flags = {a.split("=", 1)[0] for a in rest if a.startswith("--")}
    if flags & {"--checkpoint", "--input"}:
        return True
    return not any(f in ("--config", "--ckpt_path") or "." in f for f in flags)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in ("--version", "-V"):
        from detkit import __version__

        print(f"detkit {__version__}")
        return 0
    try:
        if command == "evaluate":
            from detkit.evaluation import evaluate_main

            return int(evaluate_main(rest) or 0)
        if command == "proposals":
            return _run_proposals(rest)
        if command == "predict" and _predicts_files(rest):
            from detkit.engine.cli import predict_files_main

            return predict_files_main(rest)
        if command in LIGHTNING_COMMANDS:
            import torch

            from detkit.engine.cli import cli_main

            try:
                cli_main(argv)
            except torch.OutOfMemoryError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
                raise MemoryError(
                    f"{first}; use a smaller --data.batch_size, --trainer.precision bf16-mixed, "
                    "or smaller images (--data.min_size / --data.max_size)"
                ) from e
            return 0
    except SystemExit as e:  # argparse / jsonargparse already printed their message
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (OSError, ValueError, MemoryError) as e:
        return _fail(command, e)
    print(f"detkit: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
