"""Precompute selective-search proposals into a resumable cache (same as `detkit proposals`).

    python scripts/precompute_proposals.py --annotations A.json --image-root DIR --output cache.bin
"""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["proposals", *sys.argv[1:]]))
