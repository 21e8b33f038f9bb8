"""Packages that import their names on first use: importing the package (or one of its light modules, such as the
settings the command line checks before it loads torch) then does not import the modules that need torch."""

from __future__ import annotations

import importlib
from typing import Any

from ._deprecation import moved_attribute


def package_attribute(package: str, homes: dict[str, str], name: str) -> Any:
    """For a package's ``__getattr__``: ``name`` from the module of ``package`` that ``homes`` names for it, imported
    now; a name that moved in the re-layout from its new home, with a deprecation warning; AttributeError for any
    other name."""
    if name in homes:
        return getattr(importlib.import_module(f".{homes[name]}", package), name)
    return moved_attribute(package, name, stacklevel=4)  # the caller of the package's __getattr__
