"""The `detkit` command: one module per command, imported only when that command runs.

    detkit fit|validate|test --config NAME_OR_YAML [--key value ...]   detkit.cli.lightning (LightningCLI)
    detkit predict --checkpoint CKPT | --onnx M.onnx | --config C ...  detkit.cli.predict
    detkit evaluate --annotations GT.json --predictions RESULTS.json   detkit.cli.evaluate (COCO / VOC metrics)
    detkit proposals --annotations A.json --image-root DIR --output C  detkit.cli.proposals (selective search)
    detkit export --checkpoint CKPT --format onnx|pt2 --output PATH    detkit.cli.export
    detkit configs [NAME]                                              detkit.cli.configs (packaged configs)
    detkit --version

`--config NAME` is a config shipped in the package (`detkit configs` lists them), so the
commands work from any folder; a path to a YAML file works as well.
A command whose optional dependencies are missing names the extra to install.
`detkit --help` and `detkit evaluate` start without importing torch or Lightning.

Errors such as missing files end with a one-line message on stderr and exit status 2
(set DETKIT_DEBUG=1 to see the traceback).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from detkit.cli.configs import config_dir, list_configs, resolve_config

__all__ = ["COMMANDS", "LIGHTNING_COMMANDS", "config_dir", "list_configs", "main", "resolve_config"]

USAGE = """usage: detkit <command> [options]

commands:
  fit         train a model:            detkit fit --config shapes_faster_rcnn_tiny
  validate    evaluate a checkpoint:    detkit validate --config CONFIG --ckpt_path CKPT
  test        same on the test loader:  detkit test --config CONFIG --ckpt_path CKPT
  predict     image files:              detkit predict --checkpoint CKPT --input IMG_OR_DIR --output DIR
              (COCO results json; --annotations GT.json for its image ids; --onnx M.onnx for an export)
              or the config's data:     detkit predict --config CONFIG --ckpt_path CKPT
  evaluate    COCO metrics of a json:   detkit evaluate --annotations GT.json --predictions OUT/
  analyze     HTML report of mistakes:  detkit analyze --annotations GT.json --predictions OUT/ --output REPORT/
  proposals   selective-search cache:   detkit proposals --annotations A.json --image-root DIR --output CACHE
  configs     the packaged configs:     detkit configs            (one: detkit configs NAME > my.yaml)
  export      ONNX / torch.export file: detkit export --checkpoint CKPT --format onnx|pt2 --output PATH

--config takes a packaged config's name or a YAML path. `detkit <command> --help` lists a
command's options and examples; --version prints the version.

examples (train the shapes detector, minutes on a CPU, then detect objects with its checkpoint):
  detkit fit --config shapes_faster_rcnn_tiny
  detkit predict --checkpoint runs/shapes_faster_rcnn_tiny/version_0/checkpoints/last.ckpt \\
      --input data/shapes/val/images --output predictions/
"""

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")  # LightningCLI subcommands (predict: with --config)
# command -> module of detkit.cli that runs it
COMMANDS = {
    "fit": "lightning",
    "validate": "lightning",
    "test": "lightning",
    "predict": "predict",
    "evaluate": "evaluate",
    "proposals": "proposals",
    "export": "export",
    "configs": "configs",
    "analyze": "analyze",
}


def _fail(command: str, exc: BaseException) -> int:
    if os.environ.get("DETKIT_DEBUG"):
        raise exc
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"detkit {command}: error: {message}", file=sys.stderr)
    return 2


def _missing_extra(command: str, exc: ImportError) -> int:
    """One line naming the extra that installs a missing optional dependency."""
    from detkit.utils.optional import MissingExtraError, extra_for, missing_message

    if isinstance(exc, MissingExtraError):
        return _fail(command, exc)
    name = getattr(exc, "name", None) or ""
    if os.environ.get("DETKIT_DEBUG") or extra_for(name) is None:
        raise exc  # not an optional dependency: a real error
    print(f"detkit {command}: error: {missing_message(name, extra_for(name, command))}", file=sys.stderr)
    return 2


def _run(command: str, rest: list[str]) -> int:
    module = importlib.import_module(f"detkit.cli.{COMMANDS[command]}")
    if COMMANDS[command] == "lightning":
        return module.run(command, rest)
    return int(module.main(rest, prog=f"detkit {command}") or 0)


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
    if command not in COMMANDS:
        print(f"detkit: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return _run(command, rest)
    except SystemExit as e:  # argparse / jsonargparse already printed their message
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BrokenPipeError:  # output piped into a reader that stopped (`detkit configs | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (OSError, ValueError, MemoryError) as e:
        return _fail(command, e)
    except ImportError as e:
        return _missing_extra(command, e)
