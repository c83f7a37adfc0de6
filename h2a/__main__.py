"""``python -m h2a``: see h2a/cli/."""

import sys

from h2a.cli import main

if __name__ == "__main__":
    sys.exit(main())
