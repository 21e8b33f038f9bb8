"""The ``latentsync`` console script: see :mod:`latentsync.commands` (the parsers and other names that lived here
moved there and to :mod:`latentsync.utils`; they keep working for one release, with a deprecation warning)."""

from __future__ import annotations

import sys
from typing import Any

from ._deprecation import moved_attribute
from .commands import main

__all__ = ["main"]

_MOVED = {
    "default_device": "latentsync.utils",
    "DTYPES": "latentsync.utils",
    "DEFAULT_MODEL": "latentsync.commands.run",
    "run": "latentsync.commands.run",
    "make_tiny": "latentsync.commands.make_tiny",
    "convert": "latentsync.commands.convert",
    "eval_command": "latentsync.commands.eval:main",
    "prepare_command": "latentsync.commands.prepare:prepare",
}


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, name, _MOVED)


if __name__ == "__main__":
    sys.exit(main())
