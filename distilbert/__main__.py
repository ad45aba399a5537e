"""``python -m distilbert``: the command line of :mod:`distilbert.cli`."""

import sys

from distilbert.cli import main

if __name__ == "__main__":
    sys.exit(main())
