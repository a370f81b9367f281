"""COCO metrics of a predictions json: `python scripts/evaluate.py --annotations GT.json --predictions RES.json`.

Same as `detkit evaluate ...`. To evaluate a checkpoint on a config's validation data, use
`detkit validate --config configs/X.yaml --ckpt_path CKPT`.
"""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
