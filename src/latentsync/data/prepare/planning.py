"""Finding the source videos, cutting each into clips, and re-cutting a clip's audio by its sync offset."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ...errors import LatentSyncInputError
from ...media.constants import SAMPLES_PER_FRAME
from ...media.files import is_video_file
from ...utils import true_runs

logger = logging.getLogger(__name__)


def plan_clips(has_face: np.ndarray, cuts: Sequence[int], min_frames: int, max_frames: int
               ) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """Cut a video into clips.

    Args:
        has_face: per-frame flag ``(N,)``.
        cuts: frame indices where a new scene starts.
        min_frames / max_frames: clip length range.

    Returns:
        ``[(start, end), ...]`` frame ranges (end exclusive) and the number of frames dropped per reason
        (``no_face``, ``too_short``). Every run of face frames inside a scene gives ``ceil(len / max_frames)`` equal
        clips when that keeps them at least ``min_frames`` long, else as many ``max_frames`` clips as fit.
    """
    has_face = np.asarray(has_face, dtype=bool)
    n = len(has_face)
    bounds = sorted({0, n, *[c for c in cuts if 0 < c < n]})
    clips: list[tuple[int, int]] = []
    dropped = {"no_face": int((~has_face).sum()), "too_short": 0}
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        for i, j in true_runs(has_face, s0, s1):
            length = j - i
            if length < min_frames:
                dropped["too_short"] += length
            else:
                pieces = -(-length // max_frames)
                if length // pieces >= min_frames:
                    edges = np.linspace(i, j, pieces + 1).round().astype(int)
                    clips.extend((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))
                else:
                    pieces = length // max_frames
                    clips.extend((i + k * max_frames, i + (k + 1) * max_frames) for k in range(pieces))
                    dropped["too_short"] += length - pieces * max_frames
    return clips, dropped


def shifted_audio(audio: np.ndarray, start: int, end: int, offset: int) -> np.ndarray:
    """Audio of video frames ``[start, end)`` taken ``offset`` frames later in the track (zero-padded at the ends),
    i.e. the sound that belongs to frame ``k`` is heard ``offset`` frames after it in ``audio``."""
    a, b = (start + offset) * SAMPLES_PER_FRAME, (end + offset) * SAMPLES_PER_FRAME
    out = np.zeros(b - a, dtype=np.float32)
    lo, hi = max(a, 0), min(b, len(audio))
    if hi > lo:
        out[lo - a : hi - a] = audio[lo:hi]
    return out


def video_key(relpath: str) -> str:
    """Stable file-system-safe key of a source video (its name plus a hash of its relative path, as the file
    system's bytes: a name that is not valid UTF-8 has one too)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.basename(relpath))[0])[:60] or "video"
    return f"{stem}-{hashlib.sha1(relpath.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def source_text(text: str) -> str:
    """``text`` (a source video's relative path, or a message that names it) as the records, summaries, CSV files
    and dataset hold it: the bytes of a file name that are not valid UTF-8 (an old archive's Latin-1 names; Python
    holds them as lone surrogates, which no UTF-8 file or Arrow string can take) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class InputFiles(NamedTuple):
    """What [`scan_input`] found: ``videos`` (paths relative to the input folder, sorted), ``duplicates`` (``{other
    path: the processed path}`` of files reached under a second name) and ``other_files`` (how many files of each
    ending, lower case, were skipped as not videos)."""

    videos: list[str]
    duplicates: dict[str, str]
    other_files: dict[str, int]


def find_videos(input_dir: str, exclude: Sequence[str] = ()) -> list[str]:
    """Video files under ``input_dir`` (recursive, sorted), as paths relative to it: see [`scan_input`]."""
    return scan_input(input_dir, exclude).videos


def scan_input(input_dir: str, exclude: Sequence[str] = ()) -> InputFiles:
    """The video files under ``input_dir``, the ones that are another of them under a second name, and the endings
    of the other files (a video ending is what makes a file a video here).

    Sub-folders are searched, linked ones included (each real folder once, so a link loop ends), except hidden ones
    and the folders ``exclude`` names (the output folder); hidden files are skipped, and a folder that cannot be
    listed (no permission) is named in a warning. A file reached twice (a link
    to a video of the folder, a hard link) is one video: its own path is processed (not a link's; of hard links, the
    first in sorted order).
    """
    if not os.path.isdir(input_dir):
        raise LatentSyncInputError(f"input folder not found: {input_dir}")
    skipped = {os.path.realpath(path) for path in exclude}
    seen_folders: set[str] = set()
    found: list[str] = []
    other_files: Counter[str] = Counter()
    def unreadable(exc: OSError) -> None:
        logger.warning("cannot read the folder %s (%s): its videos are not read", source_text(exc.filename or "?"),
                       exc.strerror or exc)

    for root, dirs, files in os.walk(input_dir, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_folders or real in skipped:
            dirs[:] = []
            continue
        seen_folders.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.relpath(os.path.join(root, name), input_dir) for name in files if is_video_file(name)]
        other_files.update(os.path.splitext(name)[1].lower() or "(none)" for name in files
                           if not name.startswith(".") and not is_video_file(name))
    real_input = os.path.realpath(input_dir)

    def through_link(relpath: str) -> bool:
        return os.path.realpath(os.path.join(input_dir, relpath)) != os.path.join(real_input, relpath)

    videos: list[str] = []
    duplicates: dict[str, str] = {}
    first: dict[tuple[int, int], str] = {}
    for relpath in sorted(found, key=lambda rel: (through_link(rel), rel)):  # a file's own path before its links
        try:
            st = os.stat(os.path.join(input_dir, relpath))
        except OSError:  # a link to nothing: processed, and reported as unreadable
            videos.append(relpath)
            continue
        identity = (st.st_dev, st.st_ino)
        if identity in first:
            duplicates[relpath] = first[identity]
        else:
            first[identity] = relpath
            videos.append(relpath)
    return InputFiles(sorted(videos), dict(sorted(duplicates.items())), dict(sorted(other_files.items())))
