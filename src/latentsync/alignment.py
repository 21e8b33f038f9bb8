"""Deprecated: face alignment moved to :mod:`latentsync.face`."""

from ._deprecation import warn_moved
from .face.alignment import FaceAligner, similarity_transform, smooth_anchors  # noqa: F401

warn_moved(__name__, "latentsync.face")
