"""Checks and searches of media files on disk."""

from __future__ import annotations

import os

from ..errors import LatentSyncInputError
from .constants import VIDEO_EXTENSIONS


def check_input_file(path: str | os.PathLike, error: type[LatentSyncInputError], what: str) -> str:
    """``path`` as a string, or ``error`` naming the file when it does not exist or is empty; ``what`` is
    ``"video"`` or ``"audio"``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{what} file not found: {path}")
    if os.path.getsize(path) == 0:
        raise error(f"{what} file is empty (0 bytes): {path}")
    return path


def is_video_file(name: str) -> bool:
    """Whether a file name has a video ending (any case) and is not hidden."""
    base = os.path.basename(name)
    return base.lower().endswith(VIDEO_EXTENSIONS) and not base.startswith(".")


def find_videos(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Video files in ``folder`` (and its sub-folders, hidden ones excepted, when ``recursive``), as sorted paths
    relative to ``folder``."""
    folder = os.fspath(folder)
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found += [os.path.relpath(os.path.join(root, name), folder) for name in files if is_video_file(name)]
    return sorted(found)
