"""``python -m specmetrics``: the command line (see :mod:`specmetrics.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
