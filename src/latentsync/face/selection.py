"""Which face tracks a lip-sync run regenerates, and with which voice.

The choice is always of whole tracks (a face followed through a shot), never of a position in the frame:

* ``face="largest"`` (default): in each shot, the track whose face covers the most picture over the shot (box area
  summed over its frames), so a face glimpsed for a moment does not win over the one on screen;
* ``face="speaking"``: in each shot, the track whose mouth follows the video's own soundtrack best
  ([`latentsync.face.speaking`]); when no face is clearly speaking, the largest, with a warning;
* ``face_index=k``: track ``k`` (numbered by first frame, then from left to right);
* ``face_box=(x, y, w, h)`` with ``face_box_frame``: the track whose box overlaps that box most on that frame;
* a voice per face (``audio={track: speech, ...}``): each listed track with its own speech.

[`select_faces`] returns the tracks of every voice and, per shot, a [`ShotFaces`] record of what was chosen and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LatentSyncInputError
from ..media.audio import Track
from ..media.video import FrameSource
from ..models.syncnet import StableSyncNet
from .choice import is_track_index, track_key
from .speaking import SpeakingRule, clear_speaker, soundtrack, speaking_scores
from .tracking import FaceTrack, FaceTracks

logger = logging.getLogger(__name__)

@dataclass
class ShotFaces:
    """What was lip-synced in one shot.

    Attributes:
        shot: the shot's number.
        start, end: its frames ``[start, end)``.
        tracks: the lip-synced tracks (one, or one per voice with a voice per face; none when the shot has no usable
            face or another track was asked for).
        rule: how they were chosen: ``"largest"``, ``"speaking"``, ``"largest (no clear speaker)"``,
            ``"largest (no soundtrack)"``, ``"face_index"``, ``"face_box"`` or ``"audio per face"``.
        scores: the speaking score of every track of the shot (``face="speaking"`` only; None for a track too short
            to score).
    """

    shot: int
    start: int
    end: int
    tracks: tuple[int, ...]
    rule: str
    scores: dict[int, float | None] = field(default_factory=dict)

    @property
    def track(self) -> int | None:
        """The lip-synced track (the first one with a voice per face), or None."""
        return self.tracks[0] if self.tracks else None


@dataclass
class FaceSelection:
    """The tracks lip-synced to each voice (``voices[v]``, in the order of the voices) and the per-shot record."""

    voices: list[list[FaceTrack]]
    shots: list[ShotFaces]


def largest_track(candidates: Sequence[FaceTrack]) -> FaceTrack | None:
    """The track that covers the most picture (box area summed over its frames), or None."""
    usable = [t for t in candidates if t.has_landmarks]
    return max(usable, key=lambda t: t.total_area) if usable else None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _track_by_index(tracks: FaceTracks, index: int, what: str) -> FaceTrack:
    if index >= len(tracks):
        listed = f"0..{len(tracks) - 1}" if len(tracks) > 1 else "0"
        raise LatentSyncInputError(f"{what}={index}, but {len(tracks)} face track(s) were found in {tracks.label} "
                                   f"(valid: {listed}); list them with pipe.detect_faces() or `latentsync faces`")
    track = tracks[index]
    if not track.has_landmarks:
        raise LatentSyncInputError(f"face track {index} of {tracks.label} never shows enough of the face to be "
                                   "lip-synced (no landmarks in any frame)")
    return track


def track_at_box(tracks: FaceTracks, box: Sequence[float], frame: int) -> FaceTrack:
    """The track whose box overlaps ``box`` ``(x, y, w, h)`` most on ``frame``.

    Raises:
        LatentSyncInputError: ``frame`` is past the video, or no track's box overlaps ``box`` on it.
    """
    if frame >= tracks.num_frames:
        raise LatentSyncInputError(f"face_box_frame={frame}, but {tracks.label} has {tracks.num_frames} frames at "
                                   "25 fps")
    box = np.asarray(box, np.float64)
    found = [(t, t.box_at(frame)) for t in tracks]
    found = [(t, b) for t, b in found if b is not None]
    best = max(found, key=lambda tb: _iou(box, tb[1]), default=None)
    if best is None or _iou(box, best[1]) <= 0:
        boxes = ", ".join(f"face {t.index}: {tuple(int(round(v)) for v in b)}" for t, b in found) or "none"
        raise LatentSyncInputError(f"no face track overlaps face_box={tuple(box.tolist())} on frame {frame} of "
                                   f"{tracks.label} (faces on that frame: {boxes})")
    return best[0]


def select_faces(
    tracks: FaceTracks,
    face: str | int | FaceTrack | None = None,
    face_index: int | None = None,
    face_box: Sequence[float] | None = None,
    face_box_frame: int = 0,
    voice_tracks: Sequence[int | FaceTrack] | None = None,
    scores: dict[int, float | None] | None = None,
    rule: SpeakingRule | None = None,
    no_scores_reason: str = "no soundtrack",
) -> FaceSelection:
    """Choose the tracks to lip-sync (see the module docstring).

    Args:
        tracks: the video's face tracks.
        face, face_index, face_box, face_box_frame: the choice (checked by [`check_face_arguments`]).
        voice_tracks: with a voice per face, the track of each voice, in order.
        scores, rule: the speaking scores of the tracks and the rule that reads them (``face="speaking"``); without
            them every shot falls back to its largest face (``no_scores_reason`` says why in the record).

    Raises:
        LatentSyncInputError: ``face_index`` (or a voice's track) is not among the tracks found, or ``face_box``
            overlaps no face.
    """
    if isinstance(face, FaceTrack):
        face_index, face = face.index, None
    elif is_track_index(face):
        face_index, face = int(face), None
    if voice_tracks is not None:
        chosen = [_track_by_index(tracks, track_key(k), "audio mapping key") for k in voice_tracks]
        voices, rule_name = [[t] for t in chosen], "audio per face"
    elif face_index is not None:
        voices, rule_name = [[_track_by_index(tracks, int(face_index), "face_index")]], "face_index"
    elif face_box is not None:
        voices, rule_name = [[track_at_box(tracks, face_box, int(face_box_frame))]], "face_box"
    else:
        return _per_shot(tracks, face or "largest", scores, rule, no_scores_reason)
    picked = {t.index for voice in voices for t in voice}
    shots = [ShotFaces(s, a, b, tuple(t.index for t in tracks.in_shot(s) if t.index in picked), rule_name)
             for s, (a, b) in enumerate(tracks.shots)]
    return FaceSelection(voices, shots)


def choose_faces(
    tracks: FaceTracks,
    source: FrameSource,
    face: str | int | FaceTrack | None = None,
    face_index: int | None = None,
    face_box: Sequence[float] | None = None,
    face_box_frame: int = 0,
    voice_tracks: Sequence[int | FaceTrack] | None = None,
    syncnet: StableSyncNet | None = None,
    progress: Callable[..., Any] | None = None,
    sound_track: Track = "speech",
) -> FaceSelection:
    """[`select_faces`] for the video ``source``; for ``face="speaking"`` the tracks are first scored against the
    video's own soundtrack (its audio track ``sound_track``, as [`~latentsync.media.audio.load_audio`] takes it), by
    ``syncnet`` when given (one more pass over ``source``), else by lip motion. Without a soundtrack (or with a
    silent one) every shot with several faces falls back to its largest face, with a warning."""
    scores, rule, reason = None, None, "no soundtrack"
    if face == "speaking" and voice_tracks is None:
        sound, reason = soundtrack(source, sound_track)
        if sound is None:
            several = any(sum(t.has_landmarks for t in tracks.in_shot(s)) > 1 for s in range(len(tracks.shots)))
            if several:  # a shot with one face needs no speaker told apart
                logger.warning("face='speaking': %s has %s, so who speaks cannot be heard; lip-syncing the largest "
                               "face of each shot", source.label, reason)
        else:
            scores, rule = speaking_scores(tracks, sound, syncnet, source, progress)
    return select_faces(tracks, face, face_index, face_box, face_box_frame, voice_tracks, scores, rule,
                        no_scores_reason=reason or "")


def _per_shot(tracks: FaceTracks, face: str, scores: dict[int, float | None] | None, rule: SpeakingRule | None,
              no_scores_reason: str) -> FaceSelection:
    """One track per shot: the largest, or the clear speaker."""
    chosen: list[FaceTrack] = []
    shots = []
    for s, (a, b) in enumerate(tracks.shots):
        candidates = [t for t in tracks.in_shot(s) if t.has_landmarks]
        largest = largest_track(candidates)
        shot_scores = {t.index: scores.get(t.index) for t in tracks.in_shot(s)} if scores is not None else {}
        pick, name = largest, "largest"
        if face == "speaking" and scores is None:
            if len(candidates) > 1:  # one face (or none) is no guess: nobody else could be speaking
                name = f"largest ({no_scores_reason})"
        elif face == "speaking" and candidates:
            speaker = clear_speaker(candidates, scores, rule) if len(candidates) > 1 else candidates[0]
            if speaker is not None:
                pick, name = speaker, "speaking"
            else:
                name = "largest (no clear speaker)"
                listed = ", ".join(f"face {k}: {'-' if v is None else f'{v:.2f}'}" for k, v in shot_scores.items())
                logger.warning("shot %d (frames %d-%d): no face is clearly speaking (scores %s); lip-syncing the "
                               "largest, face %d", s, a, b - 1, listed, largest.index)
        if pick is not None:
            chosen.append(pick)
        shots.append(ShotFaces(s, a, b, (pick.index,) if pick is not None else (), name, shot_scores))
    return FaceSelection([chosen], shots)
