"""``python -m omnitron.daemon``: the daemon process, without the CLI."""

import sys

from ._entry import main

if __name__ == "__main__":
    sys.exit(main())
