"""``python -m bgem3`` runs the ``bgem3`` command (see :mod:`bgem3.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
