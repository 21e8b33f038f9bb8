"""Deprecated: the tiny random-weight models moved to :mod:`latentsync.testing`."""

from ._deprecation import warn_moved
from .testing import build_tiny_pipeline  # noqa: F401

warn_moved(__name__, "latentsync.testing")
