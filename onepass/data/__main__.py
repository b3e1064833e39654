"""``python -m onepass.data``: the command line of :mod:`onepass.data.cli`."""

import sys

from .cli import main

sys.exit(main())
