"""Command-line entry point (`detkit`).

    detkit fit|validate|test|predict --config NAME_OR_YAML [--key value ...]     (LightningCLI)
    detkit predict --checkpoint CKPT --input IMG_OR_DIR --output DIR              (image files)
    detkit evaluate --annotations GT.json --predictions RESULTS.json              (COCO metrics)
    detkit proposals --annotations A.json --image-root DIR --output CACHE          (selective search)
    detkit configs [NAME]                                                        (packaged configs)
    detkit --version

`--config NAME` is a config shipped in the package (`detkit configs` lists them), so the
commands work from any folder; a path to a YAML file works as well.
A command whose optional dependencies are missing names the extra to install.

Errors such as missing files end with a one-line message on stderr and exit status 2
(set DETKIT_DEBUG=1 to see the traceback).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

USAGE = """usage: detkit <command> [options]

commands:
  fit         train a model:            detkit fit --config shapes_faster_rcnn_tiny
  validate    evaluate a checkpoint:    detkit validate --config CONFIG --ckpt_path CKPT
  test        same on the test loader:  detkit test --config CONFIG --ckpt_path CKPT
  predict     image files:              detkit predict --checkpoint CKPT --input IMG_OR_DIR --output DIR
              (COCO results json; --annotations GT.json for its image ids)
              or the config's data:     detkit predict --config CONFIG --ckpt_path CKPT
  evaluate    COCO metrics of a json:   detkit evaluate --annotations GT.json --predictions RES.json
  proposals   selective-search cache:   detkit proposals --annotations A.json --image-root DIR --output CACHE
  configs     the packaged configs:     detkit configs            (one: detkit configs NAME > my.yaml)
  export      ONNX / torch.export file: detkit export --checkpoint CKPT --format onnx|pt2 --output PATH

--config takes a packaged config's name or a YAML path. `detkit <command> --help` lists a
command's options; --version prints the version.
"""

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _fail(command: str, exc: BaseException) -> int:
    if os.environ.get("DETKIT_DEBUG"):
        raise exc
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"detkit {command}: error: {message}", file=sys.stderr)
    return 2


def config_dir() -> Path:
    """The packaged configs: detkit/configs (in a checkout, a link to the top-level configs/)."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parent / "configs"  # checkout without symlinks


def list_configs() -> dict[str, Path]:
    """{name: path} of the packaged configs, sorted by name."""
    return {p.stem: p for p in sorted(config_dir().glob("*.yaml"))}


def resolve_config(value: str) -> str:
    """The YAML for `--config value`: an existing path as given, else a packaged config.

    `NAME`, `NAME.yaml` and `configs/NAME.yaml` (the README's paths, outside a checkout)
    name the packaged config `NAME`.
    """
    if os.path.exists(value):
        return value
    path = Path(value)
    name = path.stem if path.suffix in (".yaml", ".yml") else path.name
    if path.parent in (Path("."), Path("configs")):
        found = list_configs().get(name)
        if found is not None:
            return str(found)
        if path.parent == Path(".") and not path.suffix:
            raise FileNotFoundError(f"no config named {value!r} (`detkit configs` lists them) and no such file")
    return value  # jsonargparse reports a missing file


def _resolve_config_args(argv: list[str]) -> list[str]:
    """`argv` with each `--config` / `-c` value passed through `resolve_config`."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in ("--config", "-c") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return out


def _config_summary(path: Path, limit: int = 100) -> str:
    """The first sentence of a config's leading comment, shortened to `limit` characters."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or line.startswith("#  "):  # end of the comment, or a command
            break
        words += line.lstrip("#").split()
    text = " ".join(words)
    end = re.search(r"\.\s+[A-Z]", text)  # a sentence ends; "e.g. 8" does not
    text = text[: end.start() + 1] if end else text
    return text if len(text) <= limit else text[: limit - 3].rstrip(" ,;:") + "..."


def _run_configs(argv: list[str]) -> int:
    """`detkit configs`: list the packaged configs; `detkit configs NAME` prints one."""
    configs = list_configs()
    if argv and argv[0] in ("-h", "--help"):
        print("usage: detkit configs [NAME]\n\nLists the packaged configs, or prints config NAME.")
        return 0
    if len(argv) > 1:
        raise ValueError("usage: detkit configs [NAME]")
    if argv:
        if argv[0] not in configs:
            raise ValueError(f"no config named {argv[0]!r}; `detkit configs` lists them")
        sys.stdout.write(configs[argv[0]].read_text(encoding="utf-8"))
        return 0
    width = max((len(n) for n in configs), default=0)
    for name, path in configs.items():
        print(f"{name:<{width}}  {_config_summary(path)}")
    print(f"\n{len(configs)} configs in {config_dir()}; use: detkit fit --config NAME")
    return 0


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
        if command == "configs":
            return _run_configs(rest)
        if command == "export":
            from detkit.export.cli import export_main

            return export_main(rest)
        if command == "predict" and _predicts_files(rest):
            from detkit.engine.cli import predict_files_main

            return predict_files_main(rest)
        if command in LIGHTNING_COMMANDS:
            import torch

            from detkit.engine.cli import cli_main

            try:
                cli_main(_resolve_config_args(argv))
            except torch.OutOfMemoryError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
                raise MemoryError(
                    f"{first}; use a smaller --data.batch_size, --trainer.precision bf16-mixed, "
                    "or smaller images (min_size / max_size in --model.model_kwargs)"
                ) from e
            return 0
    except SystemExit as e:  # argparse / jsonargparse already printed their message
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BrokenPipeError:  # output piped into a reader that stopped (`detkit configs | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (OSError, ValueError, MemoryError) as e:
        return _fail(command, e)
    except ImportError as e:
        return _missing_extra(command, e)
    print(f"detkit: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
