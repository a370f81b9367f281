"""Train a detector from a config: `python scripts/train.py --config configs/X.yaml [--key value ...]`.

Same as `detkit fit ...`.
"""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["fit", *sys.argv[1:]]))
