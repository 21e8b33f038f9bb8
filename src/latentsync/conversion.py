"""Deprecated: official checkpoint conversion moved to :mod:`latentsync.loaders`, the official scheduler settings
to :mod:`latentsync.schedulers`."""

from __future__ import annotations

import os
from typing import Any

from ._deprecation import warn_moved
from .loaders import *  # noqa: F401,F403
from .loaders.official import load_official_components
from .pipeline import LatentSyncPipeline
from .schedulers import OFFICIAL_SCHEDULER_CONFIG  # noqa: F401


def load_official_pipeline(source: str | os.PathLike, *, pipeline_class: type | None = None,
                           **kwargs: Any) -> LatentSyncPipeline:
    """Deprecated: ``LatentSyncPipeline.from_pretrained(source, ...)`` (or ``LatentSyncPipeline(
    **load_official_components(source, ...))``)."""
    return (pipeline_class or LatentSyncPipeline)(**load_official_components(source, **kwargs))


warn_moved(__name__, "latentsync.loaders and latentsync.schedulers")
