"""``python -m latentsync ...`` runs the ``latentsync`` command (the same as the console script)."""

import sys

from .commands import main

sys.exit(main())
