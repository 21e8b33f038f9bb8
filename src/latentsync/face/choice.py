"""The arguments that choose which faces a lip-sync run regenerates, and their checks.

They are checked before any work (by [`latentsync.inputs.check_run_inputs`], which the command line runs before it
loads torch), so this module imports neither torch nor the face detector; [`latentsync.face.selection`] applies them
to the tracks found in a video.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import LatentSyncInputError

FACE_RULES = ("largest", "speaking")
"""The rules ``face=`` accepts besides a track: the largest face of each shot, or the one speaking in it."""


def is_track_index(value: Any) -> bool:
    """Whether ``value`` is an integer (not a bool): the form of a track number."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_track(value: Any) -> bool:
    """Whether ``value`` is a [`FaceTrack`] (as found by ``detect_faces``)."""
    # not imported here (the face modules import torch): a FaceTrack can only exist once its module is loaded
    tracking = sys.modules.get(f"{__package__}.tracking")
    return tracking is not None and isinstance(value, tracking.FaceTrack)


def track_key(key: Any) -> int:
    """The track number of a key of an ``audio`` mapping: a track number or a [`FaceTrack`]."""
    index = key.index if is_track(key) else key
    if not is_track_index(index) or index < 0:
        raise LatentSyncInputError(f"the keys of an audio mapping are face track numbers (see detect_faces), got "
                                   f"{key!r}")
    return int(index)


def check_face_arguments(face: Any = None, face_index: Any = None, face_box: Any = None, face_box_frame: Any = 0,
                         voice_tracks: Sequence[Any] | None = None) -> None:
    """Check the face-choice arguments of a lip-sync call before any work (they select one track, or a rule).

    Raises:
        LatentSyncInputError: an argument has the wrong form, or several ways of choosing the face were given.
    """
    if face is not None and not is_track(face) and not is_track_index(face) and face not in FACE_RULES:
        raise LatentSyncInputError(f"face must be one of {', '.join(map(repr, FACE_RULES))}, a track number or a "
                                   f"FaceTrack, got {face!r}")
    if face_index is not None and (not is_track_index(face_index) or face_index < 0):
        raise LatentSyncInputError(f"face_index must be an integer >= 0, got {face_index!r}")
    if face_box is not None:
        ok = isinstance(face_box, (Sequence, np.ndarray)) and len(face_box) == 4 and all(
            isinstance(v, numbers.Real) and np.isfinite(v) for v in face_box)
        if not ok or face_box[2] <= 0 or face_box[3] <= 0:
            raise LatentSyncInputError(f"face_box must be (x, y, width, height) in pixels with a positive size, got "
                                       f"{face_box!r}")
    if not is_track_index(face_box_frame) or face_box_frame < 0:
        raise LatentSyncInputError(f"face_box_frame must be an integer >= 0, got {face_box_frame!r}")
    given = [name for name, value in (("face", face if face not in (None, "largest") else None),
                                      ("face_index", face_index), ("face_box", face_box)) if value is not None]
    if voice_tracks is not None:
        keys = [track_key(k) for k in voice_tracks]
        if not keys:
            raise LatentSyncInputError("the audio mapping is empty: give at least one {track: speech} pair")
        if given:
            raise LatentSyncInputError(f"a voice per face chooses the faces (the keys of the audio mapping); do not "
                                       f"also pass {given[0]}")
    elif len(given) > 1:
        raise LatentSyncInputError(f"choose the face one way only: got {' and '.join(given)}")
