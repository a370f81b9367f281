"""`python -m detkit ...` runs the `detkit` command."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
