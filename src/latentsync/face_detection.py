"""Deprecated: face detection moved to :mod:`latentsync.face`."""

from ._deprecation import warn_moved
from .face.detection import LEFT_BROW, NOSE, RIGHT_BROW, FaceBox, FaceDetector  # noqa: F401

warn_moved(__name__, "latentsync.face")
