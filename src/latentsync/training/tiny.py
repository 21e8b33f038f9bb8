"""Deprecated: the tiny random-weight models moved to :mod:`latentsync.testing`."""

from .._deprecation import warn_moved
from ..testing import (  # noqa: F401
    build_tiny_syncnet,
    build_tiny_videomae,
    build_tiny_vgg,
    save_tiny_training_models,
    write_synthetic_clip,
)

warn_moved(__name__, "latentsync.testing")
