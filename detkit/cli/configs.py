"""`detkit configs [NAME]`: the configs shipped in the package, and how `--config NAME` finds them."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["config_dir", "list_configs", "main", "resolve_config", "resolve_config_args"]

EXAMPLES = """examples (the second copies a config to edit; then `detkit fit --config my.yaml`):
  detkit configs
  detkit configs shapes_faster_rcnn_tiny > my.yaml
"""


def config_dir() -> Path:
    """The packaged configs: detkit/configs (in a checkout, a link to the top-level configs/)."""
    package = Path(__file__).resolve().parent.parent  # detkit/
    packaged = package / "configs"
    return packaged if packaged.is_dir() else package.parent / "configs"  # checkout without symlinks


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


def resolve_config_args(argv: Sequence[str]) -> list[str]:
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


def main(argv: Sequence[str] | None = None, prog: str = "detkit configs") -> int:
    """`detkit configs`: list the packaged configs; `detkit configs NAME` prints one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    configs = list_configs()
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: {prog} [NAME]\n\nLists the packaged configs, or prints config NAME.\n\n{EXAMPLES}", end="")
        return 0
    if len(argv) > 1:
        raise ValueError(f"usage: {prog} [NAME]")
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
