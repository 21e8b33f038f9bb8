"""Finding the source videos, cutting each into clips, and re-cutting a clip's audio by its sync offset."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence

import numpy as np

from ...errors import LatentSyncInputError
from ...media.constants import SAMPLES_PER_FRAME
from ...media.files import find_videos as find_video_files
from ...utils import true_runs


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
    """Stable file-system-safe key of a source video (its name plus a hash of its relative path)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.basename(relpath))[0])[:60] or "video"
    return f"{stem}-{hashlib.sha1(relpath.encode()).hexdigest()[:8]}"


def find_videos(input_dir: str) -> list[str]:
    """Video files under ``input_dir`` (recursive, sorted), as paths relative to it."""
    if not os.path.isdir(input_dir):
        raise LatentSyncInputError(f"input folder not found: {input_dir}")
    return find_video_files(input_dir)
