"""The face: detection and tracking (MediaPipe), alignment to LatentSync's template and paste-back, the mouth mask
that says which part of the aligned face is regenerated, face tracks through a video, which face is speaking, and
the choice of the faces a lip-sync run regenerates."""

from .alignment import FaceAligner, similarity_transform, smooth_anchors
from .detection import FaceBox, FaceDetector, largest_face
from .mask import latent_mouth_mask, mouth_mask
from .selection import FACE_RULES, FaceSelection, ShotFaces, select_faces
from .speaking import LIP_RULE, SYNCNET_RULE, SpeakingRule, lip_scores, speaking_scores, syncnet_scores
from .tracking import FaceTrack, FaceTracker, FaceTracks, track_faces

__all__ = ["FACE_RULES", "LIP_RULE", "SYNCNET_RULE", "FaceAligner", "FaceBox", "FaceDetector", "FaceSelection",
           "FaceTrack", "FaceTracker", "FaceTracks", "ShotFaces", "SpeakingRule", "largest_face", "latent_mouth_mask",
           "lip_scores", "mouth_mask", "select_faces", "similarity_transform", "smooth_anchors", "speaking_scores",
           "syncnet_scores", "track_faces"]
