"""The face: detection and tracking (MediaPipe), alignment to LatentSync's template and paste-back, the mouth mask
that says which part of the aligned face is regenerated, face tracks through a video, which face is speaking, and
the choice of the faces a lip-sync run regenerates.

The names below are imported on first use, so that ``latentsync.face.choice`` (the face arguments' checks, which the
command line runs before it loads torch) can be imported without the modules that need torch.
"""

from __future__ import annotations

from typing import Any

from .._lazy import package_attribute

_HOMES = {
    "FaceAligner": "alignment", "similarity_transform": "alignment", "smooth_anchors": "alignment",
    "FaceBox": "detection", "FaceDetector": "detection", "largest_face": "detection",
    "latent_mouth_mask": "mask", "mouth_mask": "mask",
    "FACE_RULES": "choice",
    "FaceSelection": "selection", "ShotFaces": "selection", "select_faces": "selection",
    "LIP_RULE": "speaking", "SYNCNET_RULE": "speaking", "SpeakingRule": "speaking", "lip_scores": "speaking",
    "speaking_scores": "speaking", "syncnet_scores": "speaking",
    "FaceTrack": "tracking", "FaceTracker": "tracking", "FaceTracks": "tracking", "track_faces": "tracking",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """``latentsync.face.NAME``: imported from the module that holds it, on first use."""
    return package_attribute(__name__, _HOMES, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
