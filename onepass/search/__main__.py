"""``python -m onepass.search``: see :mod:`onepass.search`."""

import sys

from . import main

sys.exit(main())
