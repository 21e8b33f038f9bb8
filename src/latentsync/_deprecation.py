"""Deprecation warnings for the import paths that moved in the re-layout (kept for one release)."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def warn_moved(old_module: str, new_location: str) -> None:
    """Warn, once per import of the old module, that ``old_module`` moved to ``new_location``."""
    warnings.warn(f"the module {old_module} is deprecated and will be removed in the next release; "
                  f"import from {new_location} instead", DeprecationWarning, stacklevel=3)


def moved_attribute(module: str, name: str, moved: dict[str, str]) -> Any:
    """For a module's ``__getattr__``: the attribute ``name`` from its new home ``moved[name]`` (``"pkg.module"`` or
    ``"pkg.module:new_name"``), with a deprecation warning; AttributeError for any other name."""
    if name not in moved:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    target, _, new_name = moved[name].partition(":")
    new_name = new_name or name
    warnings.warn(f"{module}.{name} is deprecated and will be removed in the next release; "
                  f"use {target}.{new_name}", DeprecationWarning, stacklevel=3)
    # deferred: the new home may import this module (the reason the name moved), so it is imported on first use
    return getattr(importlib.import_module(target), new_name)
