"""``python -m unifiedctx``: the command line (see :mod:`unifiedctx.cli`)."""

import sys

from unifiedctx.cli import main

if __name__ == "__main__":
    sys.exit(main())
