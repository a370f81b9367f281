"""`python -m detkit.cli ...` runs the `detkit` command."""

import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
