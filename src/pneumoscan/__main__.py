"""``python -m pneumoscan``: the same as the ``pneumoscan`` command."""

import sys

from pneumoscan.cli import main

sys.exit(main())
