"""Deprecation warnings for the import paths that moved in the re-layout (kept for one release)."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def warn_moved(old_module: str, new_location: str) -> None:
    """Warn, once per import of the old module, that ``old_module`` moved to ``new_location``."""
    warnings.warn(f"the module {old_module} is deprecated and will be removed in the next release; "
                  f"import from {new_location} instead", DeprecationWarning, stacklevel=3)


# (old module, name) -> new home, as "package.module" or "package.module:new_name"
MOVED: dict[tuple[str, str], str] = {
    ("latentsync.pipeline", "pingpong_indices"): "latentsync.streaming",
    ("latentsync.pipeline", "SCHEDULERS"): "latentsync.schedulers",
    ("latentsync.pipeline", "FPS"): "latentsync.media:VIDEO_FPS",
    ("latentsync.cli", "default_device"): "latentsync.utils",
    ("latentsync.cli", "DTYPES"): "latentsync.utils",
    ("latentsync.cli", "DEFAULT_MODEL"): "latentsync.commands.run",
    ("latentsync.cli", "run"): "latentsync.commands.run",
    ("latentsync.cli", "make_tiny"): "latentsync.commands.make_tiny",
    ("latentsync.cli", "convert"): "latentsync.commands.convert",
    ("latentsync.cli", "eval_command"): "latentsync.commands.eval:main",
    ("latentsync.cli", "prepare_command"): "latentsync.commands.prepare:prepare",
    ("latentsync.eval", "EVAL_COMMANDS"): "latentsync.commands.eval",
    ("latentsync.eval", "register_eval_command"): "latentsync.commands.eval",
    ("latentsync.eval", "FIDInceptionV3"): "latentsync.models",
    ("latentsync.eval", "SyncNetV2"): "latentsync.models",
    ("latentsync.eval.videos", "videos_command"): "latentsync.commands.eval",
    ("latentsync.eval.videos", "VIDEO_EXTENSIONS"): "latentsync.media",
    ("latentsync.eval.videos", "ALL_METRICS"): "latentsync.eval.config",
    ("latentsync.data.syncnet_dataset", "VIDEO_EXTENSIONS"): "latentsync.media",
    ("latentsync.data.prepare", "VIDEO_EXTENSIONS"): "latentsync.media",
    ("latentsync.data.prepare", "FPS"): "latentsync.media:VIDEO_FPS",
    ("latentsync.data.prepare", "SAMPLE_RATE"): "latentsync.media",
    ("latentsync.data.prepare", "SAMPLES_PER_FRAME"): "latentsync.media",
    ("latentsync.data.prepare", "main"): "latentsync.commands.prepare:prepare",
    ("latentsync.training.components", "OFFICIAL_SCHEDULER_CONFIG"): "latentsync.schedulers",
    ("latentsync.training.syncnet_trainer", "plot_loss_curves"): "latentsync.training.base:plot_history",
    ("latentsync.training.syncnet_trainer", "empty_history"): "latentsync.training.base",
    ("latentsync.training.syncnet_trainer", "STATE_FILE"): "latentsync.training.base",
}


def moved_attribute(module: str, name: str, stacklevel: int = 3) -> Any:
    """For a module's ``__getattr__``: the attribute ``name`` from its new home (see [`MOVED`]), with a deprecation
    warning (``stacklevel`` as for ``warnings.warn``, counted from here: the default points at the caller of the
    ``__getattr__`` that calls this); AttributeError for any other name."""
    if (module, name) not in MOVED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    target, _, new_name = MOVED[module, name].partition(":")
    new_name = new_name or name
    warnings.warn(f"{module}.{name} is deprecated and will be removed in the next release; "
                  f"use {target}.{new_name}", DeprecationWarning, stacklevel=stacklevel)
    # deferred: the new home may import this module (the reason the name moved), so it is imported on first use
    return getattr(importlib.import_module(target), new_name)
