"""Detect objects in image files: `python scripts/predict.py --checkpoint CKPT --input IMG_OR_DIR --output DIR`.

Same as `detkit predict ...` (--checkpoint / --onnx: image files; --config: LightningCLI predict on its data).
"""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
