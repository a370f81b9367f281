"""`detkit proposals`: precompute selective-search proposals of a COCO-format dataset into a proposal cache.

    detkit proposals --annotations instances_train.json \\
        --image-root images/train --output proposals_train.bin --workers 8

Resumable: the cache is one SQLite file written one image per transaction, so after an
interruption (Ctrl-C, kill -9) the same command computes only the missing images. The cache
records the images it is for (ids, file names, file sizes) and the selective-search settings;
a rerun with other images or settings is refused, and training refuses a cache made for other
images. Also `python scripts/precompute_proposals.py ...` from a source checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# imported at module level, not in main(): the worker pool's forkserver preloads the main
# module, so its workers start with detkit.proposals already imported
from detkit.proposals.cache import compute_proposals

__all__ = ["build_parser", "main"]


EXAMPLES = """examples (the shapes data of `make train`; R-CNN and Fast R-CNN configs take such caches):
  detkit proposals --annotations data/shapes/val/annotations.json --image-root data/shapes/val/images \\
      --output proposals_val.bin
  detkit proposals --annotations data/shapes/val/annotations.json --image-root data/shapes/val/images \\
      --output proposals_val_quality.bin --mode quality --max-proposals 1000 --workers 2
"""


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    description = "Precompute selective-search proposals of a COCO-format dataset into a proposal cache."
    p = argparse.ArgumentParser(
        prog=prog, description=description, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--annotations", required=True, type=Path, help="COCO json (its 'images' list is used)")
    p.add_argument("--image-root", required=True, type=Path, help="folder the file_name entries are relative to")
    p.add_argument("--output", required=True, type=Path, help="proposal cache file (created or resumed)")
    p.add_argument("--mode", default="fast", choices=("fast", "quality", "single"))
    p.add_argument("--max-proposals", type=int, default=2000)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--resize-to", type=int, default=None, help="run on a copy with this shorter side (faster)")
    p.add_argument("--min-size", type=float, default=None, help="drop boxes with a side below this (px)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _load_images(annotations: Path, image_root: Path):
    """[(image_id, path)] from a COCO json, or an error message."""
    if not annotations.is_file():
        return None, f"annotations file not found: {annotations}"
    if not image_root.is_dir():
        return None, f"image root is not a directory: {image_root}"
    try:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
        images = [(int(im["id"]), image_root / im["file_name"]) for im in data["images"]]
    except (OSError, ValueError) as e:
        return None, f"cannot read annotations file {annotations}: {e}"
    except (KeyError, TypeError) as e:
        return None, f"{annotations} is not COCO json (missing {e} in 'images')"
    missing = [str(p) for _, p in images if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return None, f"image file not found: {missing[0]}{more}"
    return images, None


def main(argv: Sequence[str] | None = None, prog: str | None = "detkit proposals") -> int:
    args = build_parser(prog).parse_args(argv)
    images, err = _load_images(args.annotations, args.image_root)
    if err:
        return _error(err)

    start = time.perf_counter()
    try:
        cache = compute_proposals(
            images,
            args.output,
            mode=args.mode,
            max_proposals=args.max_proposals,
            workers=args.workers,
            resize_to=args.resize_to,
            min_size=args.min_size,
            progress=not args.quiet,
        )
    except (ValueError, OSError) as e:  # bad settings, params of an existing cache, I/O
        return _error(str(e))
    except RuntimeError as e:  # some images failed; the rest are cached
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume ({args.output})", file=sys.stderr)
        return 130
    print(f"{len(cache)} images with proposals in {args.output} ({time.perf_counter() - start:.1f} s this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog=None))
