"""``python -m stepflows.bench``: see :mod:`stepflows.bench.main`."""

import sys

from .main import main

sys.exit(main())
