"""Checks and searches of media files on disk."""

from __future__ import annotations

import os
import re
import signal

from ..errors import InvalidOutputError, LatentSyncInputError
from ..tempfiles import nearest_folder
from .constants import SILENT_VIDEO_EXTENSIONS, VIDEO_EXTENSIONS


def ffmpeg_path(path: str | os.PathLike) -> str:
    """``path`` as ffmpeg and PyAV must be given it to open it as a file: a relative path that starts like a URL
    (``10:30.mp4``, ``take2:final.mov``: letters, digits, ``+-.`` then a colon) is opened by them with a protocol of
    that name ("Protocol not found"), so it gets a leading ``./``; every other path is returned as it is."""
    path = os.fspath(path)
    if re.match(r"[A-Za-z0-9+.-]+:", path) and not os.path.isabs(path):
        return os.path.join(".", path)
    return path


def check_input_file(path: str | os.PathLike, error: type[LatentSyncInputError], what: str) -> str:
    """``path`` as a string, or ``error`` naming the file when it does not exist, is a folder, is empty or cannot be
    read; ``what`` is ``"video"`` or ``"audio"``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise error(f"{what} path is a folder, not a file: {path}")
    if not os.path.isfile(path):
        raise error(f"{what} file not found: {path}")
    if os.path.getsize(path) == 0:
        raise error(f"{what} file is empty (0 bytes): {path}")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (also through hard or symbolic links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_side_output(path: str | os.PathLike, inputs: list[str | os.PathLike], what: str) -> str:
    """``path`` as a string once a side file (a contact sheet, a JSON report) may be written there: not a folder
    and not one of the ``inputs`` (a report written over the video it describes would destroy it); an existing
    file of another name is replaced, as reports are, and missing folders are created by the writer. ``what`` names
    the option in the message.

    Raises:
        InvalidOutputError: ``path`` is a folder, one of the inputs, or below a file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InvalidOutputError(f"{what} {path} is a folder: give a file name")
    _, blocker = nearest_folder(os.path.dirname(os.path.abspath(path)))  # missing folders are made, not through a file
    if blocker is not None:
        raise InvalidOutputError(f"{what} {path}: cannot create its folder, {blocker} is a file")
    for source in inputs:
        if same_file(path, source):
            raise InvalidOutputError(f"{what} {path} is the input file {os.fspath(source)}: writing it would destroy "
                                     "the input; choose another path")
    return path


# ffmpeg's last words -> what they mean for a user
_FFMPEG_HINTS = {
    "Invalid data found when processing input": "not a format ffmpeg reads, or a damaged or incomplete file",
    "moov atom not found": "the file is incomplete (an unfinished download or recording?)",
}


def ffmpeg_reason(stderr: str, returncode: int) -> str:
    """One line saying why ffmpeg failed, from its error output."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for needle, hint in _FFMPEG_HINTS.items():
        if any(needle in line for line in lines):
            return hint
    if not lines:
        if returncode < 0:  # killed without a word (a file-size limit, the out-of-memory killer...)
            return f"ffmpeg was stopped by signal {signal.Signals(-returncode).name}" \
                if -returncode in signal.valid_signals() else f"ffmpeg was stopped by signal {-returncode}"
        return f"ffmpeg exit code {returncode}"
    last = lines[-1]
    return last.split("] ", 1)[-1] if last.startswith("[") else last


def is_video_file(name: str, silent: bool = False) -> bool:
    """Whether a file name has a video ending (any case) and is not hidden; with ``silent``, also the endings of
    videos without sound ([`SILENT_VIDEO_EXTENSIONS`]: a face video whose speech is another file)."""
    base = os.path.basename(name)
    endings = VIDEO_EXTENSIONS + SILENT_VIDEO_EXTENSIONS if silent else VIDEO_EXTENSIONS
    return base.lower().endswith(endings) and not base.startswith(".")


def find_videos(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Video files in ``folder`` (and its sub-folders, hidden ones excepted, when ``recursive``), as sorted paths
    relative to ``folder``."""
    folder = os.fspath(folder)
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found += [os.path.relpath(os.path.join(root, name), folder) for name in files if is_video_file(name)]
    return sorted(found)
