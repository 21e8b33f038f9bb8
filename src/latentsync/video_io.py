"""Deprecated: video reading and writing moved to :mod:`latentsync.media`."""

from ._deprecation import warn_moved
from .media.constants import OUTPUT_FORMATS  # noqa: F401
from .media.video import FrameSource, VideoInfo, VideoWriter, iter_frames, open_frames, probe_video  # noqa: F401

warn_moved(__name__, "latentsync.media")
