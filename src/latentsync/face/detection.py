"""Face detection and landmarks with MediaPipe (models bundled in the mediapipe 0.10.21 wheel, offline).

For every frame the full-range face detector finds all faces; one face is chosen (the largest, or the
``face_index``-th from the left in the first frame where faces appear) and then tracked by position, so a second
person entering the frame does not steal the lip sync. The 468-point face mesh runs on a crop around the tracked
face and gives the three alignment anchors (centre of each eyebrow, middle of the nose).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_stderr_lock = threading.Lock()


@contextmanager
def native_log_to_debug() -> Iterator[None]:
    """Send what native code writes to the process's stderr meanwhile to this module's log at debug level.

    MediaPipe and TensorFlow Lite print start-up notices from C++ (``XNNPACK delegate``, ``absl::InitializeLog``,
    ``feedback manager``, ``NORM_RECT``) that no setting turns off and that look like errors between the progress
    bars. They come while the graphs start and see their first face, so only those calls are wrapped.
    """
    with _stderr_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable stderr (a closed or replaced stream): nothing to silence
            yield
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                for line in capture.read().decode(errors="replace").splitlines():
                    if line.strip():
                        logger.debug("mediapipe: %s", line.strip())

# Face-mesh indices: eyebrow contours (upper and lower edge) on the image-left and image-right side, and the nose
# points whose mean sits where the official template's third anchor does (about half the eyebrow distance below
# the eyebrows on a frontal face).
LEFT_BROW = [70, 63, 105, 66, 107, 46, 53, 52, 65, 55]
RIGHT_BROW = [300, 293, 334, 296, 336, 276, 283, 282, 295, 285]
NOSE = [5, 4]
# Inner-lip points facing each other (upper, lower) at the centre and halfway to each corner, and the outer eye
# corners, whose distance is the face's scale (it does not change when the mouth moves).
INNER_LIP_PAIRS = [(13, 14), (82, 87), (312, 317)]
EYE_CORNERS = (33, 263)


def anchors_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Alignment anchors ``(3, 2)`` from face-mesh points: image-left eyebrow, image-right eyebrow, nose."""
    return np.stack([landmarks[LEFT_BROW].mean(0), landmarks[RIGHT_BROW].mean(0), landmarks[NOSE].mean(0)])


def lip_gaps(landmarks: np.ndarray) -> np.ndarray:
    """How far the lips are apart ``(3,)`` at the centre and on both sides, in units of the eye-corner distance
    (so the values do not depend on the face's size in the frame)."""
    scale = np.linalg.norm(landmarks[EYE_CORNERS[0]] - landmarks[EYE_CORNERS[1]])
    gaps = [np.linalg.norm(landmarks[a] - landmarks[b]) for a, b in INNER_LIP_PAIRS]
    return np.asarray(gaps) / max(float(scale), 1e-6)


@dataclass
class FaceBox:
    """A detected face: pixel box ``(x0, y0, x1, y1)`` and detector score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2])

    @property
    def size(self) -> float:
        return max(self.x1 - self.x0, self.y1 - self.y0)

    @property
    def area(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)


MAX_DETECT_ASPECT = 2.0
"""Frames longer than this many times their short side are searched for faces in overlapping tiles."""


def detection_tiles(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` parts of a ``width`` x ``height`` frame to search for faces: the whole frame, or for a
    frame more than [`MAX_DETECT_ASPECT`] times as long as its short side, tiles of that shape along the long side
    that overlap by the short side, so that every face (never larger than the short side) is whole in one."""
    short, long = min(width, height), max(width, height)
    if long <= MAX_DETECT_ASPECT * short:
        return [(0, 0, width, height)]
    size = int(MAX_DETECT_ASPECT * short)
    step = size - short
    starts = [*range(0, long - size, step), long - size]
    if width >= height:
        return [(s, 0, s + size, height) for s in starts]
    return [(0, s, width, s + size) for s in starts]


def _without_duplicates(boxes: list[FaceBox], overlap: float = 0.5) -> list[FaceBox]:
    """``boxes`` without those that cover the same face as a box of a higher score (found in two tiles): more than
    ``overlap`` of the smaller one's area is shared."""
    kept: list[FaceBox] = []
    for box in sorted(boxes, key=lambda b: -b.score):
        shared = [max(0.0, min(box.x1, k.x1) - max(box.x0, k.x0)) * max(0.0, min(box.y1, k.y1) - max(box.y0, k.y0))
                  / max(min(box.area, k.area), 1e-6) for k in kept]
        if all(v <= overlap for v in shared):
            kept.append(box)
    return kept


def largest_face(boxes: list[FaceBox]) -> FaceBox | None:
    """The box of largest area, or None when there is none."""
    return max(boxes, key=lambda b: b.area) if boxes else None


class FaceDetector:
    """MediaPipe face detector + face mesh returning alignment anchors for one tracked face.

    Args:
        face_index: which face to follow when several are visible: ``None`` for the largest, ``k`` for the
            k-th face from the left (0-based) in the first frame that has faces.
        min_confidence: detector score threshold.
        reacquire_after: frames without the tracked face after which a face is chosen again by the same rule.
    """

    def __init__(self, face_index: int | None = None, min_confidence: float = 0.5, reacquire_after: int = 25):
        import mediapipe as mp  # deferred: mediapipe is heavy to import and only needed once faces are analysed

        with native_log_to_debug():
            self._detector = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=min_confidence
            )
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=False, min_detection_confidence=0.3
            )
            # the graphs open their models in worker threads, which print as they do: wait for them on a blank
            # image (both graphs keep no state between images, so this changes no result)
            blank = np.zeros((64, 64, 3), np.uint8)
            self._detector.process(blank)
            self._mesh.process(blank)
        self.face_index = face_index
        self.reacquire_after = reacquire_after
        self._last: FaceBox | None = None
        self._missed = 0
        self._mesh_started = False  # the landmark stage prints a notice on its first face

    def close(self) -> None:
        self._detector.close()
        self._mesh.close()

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """All faces in an RGB uint8 frame. A frame more than [`MAX_DETECT_ASPECT`] times as long as it is wide (a
        3000 x 200 banner) is searched in overlapping tiles ([`detection_tiles`]): the detector shrinks the whole
        frame to its small square input, where such a frame's faces become a few pixels."""
        h, w = frame.shape[:2]
        tiles = detection_tiles(w, h)
        boxes: list[FaceBox] = []
        for x0, y0, x1, y1 in tiles:
            found = self._detect_in(frame[y0:y1, x0:x1], x0, y0)
            if len(tiles) > 1:  # a face cut by a tile's inner edge is whole in the next tile, which overlaps it
                found = [b for b in found if (b.x0 > x0 + 1 or x0 == 0) and (b.x1 < x1 - 1 or x1 == w)
                         and (b.y0 > y0 + 1 or y0 == 0) and (b.y1 < y1 - 1 or y1 == h)]
            boxes += found
        return _without_duplicates(boxes) if len(tiles) > 1 else boxes

    def _detect_in(self, image: np.ndarray, dx: int, dy: int) -> list[FaceBox]:
        """The faces in ``image``, a part of a frame whose top-left corner is at ``(dx, dy)``, in frame pixels."""
        h, w = image.shape[:2]
        result = self._detector.process(np.ascontiguousarray(image))
        boxes = []
        for det in result.detections or []:
            bb = det.location_data.relative_bounding_box
            x0, y0 = bb.xmin * w + dx, bb.ymin * h + dy
            boxes.append(FaceBox(x0, y0, x0 + bb.width * w, y0 + bb.height * h, float(det.score[0])))
        return boxes

    def _choose(self, boxes: list[FaceBox]) -> FaceBox | None:
        if not boxes:
            return None
        if self._last is not None and self._missed <= self.reacquire_after:
            dists = [np.linalg.norm(b.center - self._last.center) for b in boxes]
            best = int(np.argmin(dists))
            return boxes[best] if dists[best] < self._last.size else None
        if self.face_index is None:
            return largest_face(boxes)
        ordered = sorted(boxes, key=lambda b: b.center[0])
        if self.face_index >= len(ordered):
            return None
        return ordered[self.face_index]

    def landmarks(self, frame: np.ndarray, box: FaceBox) -> np.ndarray | None:
        """468 face-mesh points ``(468, 2)`` in frame pixels for the face in ``box``, or None."""
        h, w = frame.shape[:2]
        cx, cy = box.center
        half = box.size * 0.9
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(w, cx + half)), int(min(h, cy + half))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        crop = np.ascontiguousarray(frame[y0:y1, x0:x1])
        if self._mesh_started:
            result = self._mesh.process(crop)
        else:
            with native_log_to_debug():
                result = self._mesh.process(crop)
            self._mesh_started = bool(result.multi_face_landmarks)
        if not result.multi_face_landmarks:
            return None
        pts = result.multi_face_landmarks[0].landmark
        return np.array([(p.x * (x1 - x0) + x0, p.y * (y1 - y0) + y0) for p in pts], dtype=np.float64)

    def track(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """Anchors ``(N, 3, 2)`` of consecutive frames, with NaN rows for frames without the tracked face."""
        no_face = np.full((3, 2), np.nan)
        rows = [a if a is not None else no_face for a in map(self.anchors, frames)]
        return np.stack(rows) if rows else np.empty((0, 3, 2))

    def anchors(self, frame: np.ndarray) -> np.ndarray | None:
        """Alignment anchors ``(3, 2)``: image-left eyebrow, image-right eyebrow, nose; None when no face."""
        boxes = self.detect(frame)
        box = self._choose(boxes)
        lm = self.landmarks(frame, box) if box is not None else None
        if lm is None:
            self._missed += 1
            return None
        self._last, self._missed = box, 0
        return anchors_from_landmarks(lm)
