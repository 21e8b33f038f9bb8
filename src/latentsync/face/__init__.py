"""The face: detection and tracking (MediaPipe), alignment to LatentSync's template and paste-back, and the mouth
mask that says which part of the aligned face is regenerated."""

from .alignment import FaceAligner, similarity_transform, smooth_anchors
from .detection import FaceBox, FaceDetector, largest_face
from .mask import latent_mouth_mask, mouth_mask

__all__ = ["FaceAligner", "FaceBox", "FaceDetector", "largest_face", "latent_mouth_mask", "mouth_mask",
           "similarity_transform", "smooth_anchors"]
