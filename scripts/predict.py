"""Detect objects in image files: `python scripts/predict.py --checkpoint CKPT --input IMG_OR_DIR --output DIR`.

Same as `detkit predict ...` (with --input: image files; without: LightningCLI predict on a config).
"""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
