"""``python -m pal_adapters.serve DIR``: the same as ``pal-adapters serve DIR``."""

import sys

from .cli import main

sys.exit(main())
