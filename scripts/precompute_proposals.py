"""Precompute selective-search proposals into a resumable cache (same as `detkit proposals`).

python scripts/precompute_proposals.py --annotations A.json --image-root DIR --output cache.bin
"""

import sys

# the command module itself, at the top: the worker pool's forkserver preloads this main module,
# so the workers start with detkit.proposals.cache already imported
from detkit.cli.proposals import main

if __name__ == "__main__":
    sys.exit(main(prog=None))
