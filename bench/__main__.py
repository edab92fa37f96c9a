"""``python -m bench``: see :mod:`bench.main`."""

import sys

from .main import main

sys.exit(main())
