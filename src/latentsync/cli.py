"""The ``latentsync`` console script: see :mod:`latentsync.commands` (the parsers and other names that lived here
moved there and to :mod:`latentsync.utils`; they keep working for one release, with a deprecation warning)."""

from __future__ import annotations

import sys
from typing import Any

from ._deprecation import moved_attribute
from .commands import main

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    """Names that lived here before the re-layout keep working for one release, with a deprecation warning."""
    return moved_attribute(__name__, name)


if __name__ == "__main__":
    sys.exit(main())
