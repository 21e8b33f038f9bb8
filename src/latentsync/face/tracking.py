"""Face tracks: every face of a video followed from frame to frame.

[`FaceTracker`] reads the frames once, in order. In each frame MediaPipe's detector finds every face and the face
mesh gives its landmarks (the alignment anchors and the lip gaps). Each face then joins the track it continues: the
one whose position, predicted from its recent motion, is nearest, among tracks of a similar face size and look (a
hue-saturation histogram of the face); the faces of a frame are matched to the tracks jointly (Hungarian
assignment), so two people crossing each other keep their identities. A track survives up to ``max_gap`` frames
without its face (a hand or another head in front, a turned head), and picks it up again where its motion says it
should be. A scene cut ends every track: faces after a cut start new tracks.

A short gap inside a track (up to [`MAX_FILLED_GAP`] frames between two frames with landmarks: a face half out of the
picture, turned or blurred for a moment) is filled by [`combined_anchors`]: the alignment anchors are interpolated
from the frames around it, so the face is lip-synced there too instead of flickering between new and original mouths.
Only frames where the face was detected (without landmarks) or where the picture at its predicted place still looks
like it (its colours, and the contrast of its mouth and chin: not a blank frame, another scene or a hand over the
mouth) are filled; never before a track's first or after its last frame, so never across a scene cut.

Tracks are numbered by their first frame, then from left to right, so in a one-shot video of two people track 0 is
the person on the left. [`FaceTracks`] holds them with the video's shots; ``contact_sheet()`` draws one thumbnail per
track.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import PIL.Image
import PIL.ImageDraw
from scipy.optimize import linear_sum_assignment

from ..media.shots import ShotDetector, shot_ranges
from ..utils import true_runs
from .alignment import smooth_anchors
from .detection import FaceBox, FaceDetector, anchors_from_landmarks, lip_gaps

logger = logging.getLogger(__name__)

_HIST_BINS = [16, 8]  # hue, saturation
_UNMATCHED = 1e6
_MOTION_MEMORY = 8  # recent detections a track's motion is fitted to

MAX_FILLED_GAP = 12
"""Longest run of frames (0.48 s at 25 fps) without landmarks inside a face track whose alignment is interpolated
from the frames on either side (see the module docstring); longer gaps pass through unchanged."""

_FILL_LOOK_DISTANCE = 0.5  # Bhattacharyya distance of the look at a missed face's place below which it may be filled
_FILL_MIN_CONTRAST = 0.5  # share of the face's usual mouth-and-chin contrast its missed place must keep to be filled
_MOUTH_GRID = (16, 12)  # coarse grey picture of the mouth and chin whose contrast is compared (noise averages out)


@dataclass(eq=False)
class FaceTrack:
    """One face followed through consecutive frames of one shot.

    Attributes:
        index: the track's number (by first frame, then from left to right).
        shot: the shot it belongs to.
        frames: frame indices (25 fps) where the face was found, increasing; frames missing in between are frames
            where it was hidden or not detected.
        boxes: its box in each of those frames, ``(n, 4)`` pixels ``(x, y, width, height)``.
        scores: the detector's confidence in each frame.
        anchors: alignment anchors ``(n, 3, 2)`` (eyebrows, nose), NaN where the face mesh failed.
        lips: lip gaps ``(n, 3)`` (see [`~latentsync.face.detection.lip_gaps`]), NaN where the face mesh failed.
        thumbnail: the face where it was seen largest and most clearly (RGB, square).
        lookalike_frames: frames between its first and last where the face was not detected but the picture at its
            predicted place still looks like it (increasing): the frames a short gap may be filled in.
    """

    index: int
    shot: int
    frames: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    anchors: np.ndarray
    lips: np.ndarray
    thumbnail: PIL.Image.Image = field(repr=False)
    lookalike_frames: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)

    @property
    def first_frame(self) -> int:
        return int(self.frames[0])

    @property
    def last_frame(self) -> int:
        return int(self.frames[-1])

    @property
    def num_frames(self) -> int:
        """Frames in which the face was found."""
        return len(self.frames)

    @property
    def has_landmarks(self) -> bool:
        """Whether the face mesh found the face at least once (only then can it be lip-synced)."""
        return bool(np.isfinite(self.anchors[:, 0, 0]).any())

    @property
    def total_area(self) -> float:
        """Box area summed over the frames where the face mesh found the face: how much of the picture the face
        fills, and for how long."""
        ok = np.isfinite(self.anchors[:, 0, 0])
        return float((self.boxes[ok, 2] * self.boxes[ok, 3]).sum())

    def box_at(self, frame: int) -> np.ndarray | None:
        """The box ``(x, y, w, h)`` at ``frame``, or None when the face was not found there."""
        k = int(np.searchsorted(self.frames, frame))
        return self.boxes[k] if k < len(self.frames) and self.frames[k] == frame else None

    def dense_anchors(self) -> np.ndarray:
        """Anchors ``(last - first + 1, 3, 2)`` for every frame of the track's span, NaN where the face is missing."""
        out = np.full((self.last_frame - self.first_frame + 1, 3, 2), np.nan)
        out[self.frames - self.first_frame] = self.anchors
        return out

    def dense_lips(self) -> np.ndarray:
        """Lip gaps ``(last - first + 1, 3)`` for every frame of the track's span, NaN where the face is missing."""
        out = np.full((self.last_frame - self.first_frame + 1, 3), np.nan)
        out[self.frames - self.first_frame] = self.lips
        return out

    def filled_anchors(self, smoothing: float = 0.0, max_gap: int = MAX_FILLED_GAP,
                       blocked: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Smoothed [`dense_anchors`] (``smoothing``: Gaussian sigma in frames) with every gap of at most ``max_gap``
        frames between two frames with anchors filled by straight-line interpolation, if the face was detected or
        still looked like itself in each of its frames and none of them is ``blocked`` (a bool per frame of the
        track's span); and how many frames were filled."""
        return self._fill_gaps(smooth_anchors(self.dense_anchors(), smoothing), max_gap, blocked)

    def _fill_gaps(self, dense: np.ndarray, max_gap: int = MAX_FILLED_GAP,
                   blocked: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """[`filled_anchors`] of ``dense``, this track's anchors over its span as smoothed already (filled in
        place)."""
        fillable = np.zeros(len(dense), bool)
        fillable[self.frames - self.first_frame] = True
        inside = self.lookalike_frames[(self.lookalike_frames > self.first_frame)
                                       & (self.lookalike_frames < self.last_frame)]
        fillable[inside - self.first_frame] = True
        if blocked is not None:
            fillable &= ~blocked
        filled = 0
        for i, j in true_runs(~np.isfinite(dense[:, 0, 0])):
            if i == 0 or j == len(dense) or j - i > max_gap or not fillable[i:j].all():
                continue
            t = (np.arange(i, j) - (i - 1)) / (j - i + 1)
            dense[i:j] = dense[i - 1] + t[:, None, None] * (dense[j] - dense[i - 1])
            filled += j - i
        return dense, filled

    def describe(self) -> str:
        """One line: number, shot, frames, median box."""
        x, y, w, h = np.median(self.boxes, axis=0).round().astype(int)
        return (f"face {self.index}: shot {self.shot}, frames {self.first_frame}-{self.last_frame} "
                f"(seen in {self.num_frames}), box x={x} y={y} w={w} h={h}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: number, shot, and the frame and box ``[x, y, w, h]`` of every detection."""
        return {"index": self.index, "shot": self.shot, "frames": self.frames.tolist(),
                "boxes": np.round(self.boxes, 1).tolist(), "scores": np.round(self.scores, 3).tolist()}


@dataclass(eq=False)
class FaceTracks:
    """The face tracks of a video and its shots (see the module docstring).

    Attributes:
        tracks: the tracks, ``tracks[i].index == i``.
        shots: ``(first, end)`` frame range of every shot.
        num_frames: frames read (25 fps).
        frame_size: ``(width, height)`` of the frames.
        label: the video's path, or ``"frames in memory"``.
    """

    tracks: list[FaceTrack]
    shots: list[tuple[int, int]]
    num_frames: int
    frame_size: tuple[int, int]
    label: str = "video"

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> FaceTrack:
        return self.tracks[index]

    def __iter__(self) -> Iterator[FaceTrack]:
        return iter(self.tracks)

    def in_shot(self, shot: int) -> list[FaceTrack]:
        """The tracks of one shot."""
        return [t for t in self.tracks if t.shot == shot]

    def describe(self) -> str:
        """A few lines: the shots and one line per track."""
        lines = [f"{len(self.tracks)} face track(s) in {len(self.shots)} shot(s) of {self.label} "
                 f"({self.num_frames} frames, {self.frame_size[0]}x{self.frame_size[1]})"]
        lines += [f"  shot {s}: frames {a}-{b - 1}" for s, (a, b) in enumerate(self.shots)]
        lines += ["  " + t.describe() for t in self.tracks]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the shots and tracks."""
        return {"video": self.label, "num_frames": self.num_frames, "frame_size": list(self.frame_size),
                "shots": [list(s) for s in self.shots], "tracks": [t.to_dict() for t in self.tracks]}

    def contact_sheet(self, columns: int = 4, tile: int = 160) -> PIL.Image.Image:
        """One tile per track: its thumbnail and, under it, its number, shot and frames."""
        columns = max(1, min(columns, len(self.tracks) or 1))
        rows = max(1, -(-len(self.tracks) // columns))
        caption = 34
        sheet = PIL.Image.new("RGB", (columns * tile, rows * (tile + caption)), "white")
        draw = PIL.ImageDraw.Draw(sheet)
        if not self.tracks:
            draw.text((8, 8), "no face found", fill="black")
        for k, track in enumerate(self.tracks):
            x, y = (k % columns) * tile, (k // columns) * (tile + caption)
            sheet.paste(track.thumbnail.resize((tile - 8, tile - 8)), (x + 4, y + 4))
            draw.text((x + 6, y + tile), f"face {track.index}  (shot {track.shot})", fill="black")
            draw.text((x + 6, y + tile + 14), f"frames {track.first_frame}-{track.last_frame}", fill="dimgray")
        return sheet


# ---------------------------------------------------------------------------------------------------- tracking
def _appearance(frame: np.ndarray, box: FaceBox) -> np.ndarray:
    """Normalised hue-saturation histogram of the middle of the face box (a cheap signature of a face's look)."""
    h, w = frame.shape[:2]
    cx, cy = box.center
    half = box.size * 0.3
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1, y1 = int(min(w, cx + half)) + 1, int(min(h, cy + half)) + 1
    patch = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([patch], [0, 1], None, _HIST_BINS, [0, 180, 0, 256]).astype(np.float32)
    return hist / max(float(hist.sum()), 1.0)


def _mouth_contrast(frame: np.ndarray, box: FaceBox) -> float:
    """Contrast (grey-level standard deviation) of a coarse picture of the mouth and chin in a face box: lips, mouth
    and chin shadow keep it under motion blur; a flat hand or skin-coloured patch in front of them does not."""
    h, w = frame.shape[:2]
    bw, bh = box.x1 - box.x0, box.y1 - box.y0
    x0, x1 = int(max(0, box.x0 + 0.2 * bw)), int(min(w, box.x0 + 0.8 * bw))
    y0, y1 = int(max(0, box.y0 + 0.55 * bh)), int(min(h, box.y0 + 0.95 * bh))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0.0
    grey = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return float(cv2.resize(grey, _MOUTH_GRID, interpolation=cv2.INTER_AREA).std())


def _landmarks_fit(landmarks: np.ndarray, box: FaceBox) -> bool:
    """Whether face-mesh points belong to the face in ``box`` (their centre inside it): where two faces overlap the
    mesh may lock onto the other one."""
    cx, cy = landmarks.mean(0)
    return box.x0 <= cx <= box.x1 and box.y0 <= cy <= box.y1


@dataclass
class _Detection:
    box: FaceBox
    landmarks: np.ndarray | None
    look: np.ndarray


class _OpenTrack:
    """A track being built: its detections so far and its motion state."""

    def __init__(self, shot: int):
        self.shot = shot
        self.frames: list[int] = []
        self.boxes: list[tuple[float, float, float, float]] = []
        self.scores: list[float] = []
        self.anchors: list[np.ndarray] = []
        self.lips: list[np.ndarray] = []
        self.recent: deque[tuple[int, np.ndarray, float]] = deque(maxlen=_MOTION_MEMORY)  # frame, centre, size
        self.size = 1.0
        self.look: np.ndarray | None = None
        self.mouth_contrast = 0.0  # of its mouth and chin, averaged over its detections like the look
        self.thumbnail: np.ndarray | None = None
        self._thumb_quality = -1.0
        self.lookalike: list[int] = []  # frames without its face where the picture there still looks like it

    @property
    def last_frame(self) -> int:
        return self.frames[-1]

    def predicted_center(self, frame: int) -> np.ndarray:
        """Where the face should be at ``frame``: a straight line fitted to its recent centres (a line through
        several detections is not thrown off by one box that a partial occlusion shrank or shifted)."""
        if len(self.recent) < 2:
            return self.recent[-1][1]
        t = np.array([f for f, _, _ in self.recent], np.float64)
        xy = np.stack([c for _, c, _ in self.recent])
        slope, intercept = np.polyfit(t - t[-1], xy, 1)
        return intercept + slope * (frame - t[-1])

    def note_missed(self, index: int, image: np.ndarray, found: Sequence[FaceBox] = ()) -> None:
        """The face was not found in frame ``index``: remember the frame if its predicted place still looks like
        the face (a face turned, blurred or half out of the picture, not a blank frame or another scene: similar
        colours, and at least half the face's usual contrast over the mouth and chin, not a skin-coloured hand over
        them) and no face of ``found`` (the frame's detections) is there (another head in front of it)."""
        box = self.predicted_box(index)
        if any(box.x0 <= f.center[0] <= box.x1 and box.y0 <= f.center[1] <= box.y1 for f in found):
            return
        if (self.look_distance(image, box) < _FILL_LOOK_DISTANCE
                and _mouth_contrast(image, box) >= _FILL_MIN_CONTRAST * self.mouth_contrast):
            self.lookalike.append(index)

    def predicted_box(self, index: int) -> FaceBox:
        """The face's box at frame ``index`` as its motion predicts it (its recent median size)."""
        center, half = self.predicted_center(index), self.size / 2
        return FaceBox(center[0] - half, center[1] - half, center[0] + half, center[1] + half, 0.0)

    def look_distance(self, image: np.ndarray, box: FaceBox) -> float:
        """How unlike the face the picture in ``box`` looks (Bhattacharyya distance of the histograms, 0..1)."""
        return float(cv2.compareHist(self.look, _appearance(image, box), cv2.HISTCMP_BHATTACHARYYA))

    def add(self, index: int, det: _Detection, image: np.ndarray, thumbnail_size: int) -> None:
        box, center = det.box, det.box.center
        contrast = _mouth_contrast(image, box)
        self.mouth_contrast = contrast if self.look is None else 0.8 * self.mouth_contrast + 0.2 * contrast
        self.look = det.look if self.look is None else 0.8 * self.look + 0.2 * det.look
        self.recent.append((index, center, max(box.size, 1.0)))
        self.size = float(np.median([s for _, _, s in self.recent]))
        self.frames.append(index)
        self.boxes.append((box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0))
        self.scores.append(box.score)
        if det.landmarks is not None:
            self.anchors.append(anchors_from_landmarks(det.landmarks))
            self.lips.append(lip_gaps(det.landmarks))
        else:
            self.anchors.append(np.full((3, 2), np.nan))
            self.lips.append(np.full(3, np.nan))
        quality = box.area * box.score * (1.0 if det.landmarks is not None else 0.25)
        if quality > self._thumb_quality:
            self._thumb_quality = quality
            side = max(8, int(round(box.size * 1.5)))
            crop = cv2.getRectSubPix(image, (side, side), (float(center[0]), float(center[1])))
            self.thumbnail = cv2.resize(crop, (thumbnail_size, thumbnail_size), interpolation=cv2.INTER_AREA)


class FaceTracker:
    """Builds the face tracks of a video from its frames, fed in order (see the module docstring).

    Args:
        max_gap: frames a track may go without its face before it ends.
        min_track_frames: shorter tracks are dropped as spurious detections (unless their shot is shorter).
        max_distance: how far (in face sizes, from where its motion predicts) a face may be to continue a track.
        appearance_weight: weight of the difference in look (0..1) against the distance when matching.
        scene_threshold: threshold of the scene-cut detector ([`~latentsync.media.shots.ShotDetector`]).
        min_confidence: detector score threshold.
        thumbnail_size: side of the thumbnails, pixels.
        workers: threads that detect faces and landmarks ahead of the tracking in [`track`] (MediaPipe runs
            without the GIL); None: up to 4, one per CPU core. The tracks do not depend on it.
    """

    def __init__(self, max_gap: int = 25, min_track_frames: int = 5, max_distance: float = 1.0,
                 appearance_weight: float = 1.0, scene_threshold: float = 27.0, min_confidence: float = 0.5,
                 thumbnail_size: int = 128, workers: int | None = None):
        self.max_gap = max_gap
        self.min_track_frames = min_track_frames
        self.max_distance = max_distance
        self.appearance_weight = appearance_weight
        self.thumbnail_size = thumbnail_size
        self.detector = FaceDetector(min_confidence=min_confidence)
        self.min_confidence = min_confidence
        self.workers = max(1, workers if workers is not None else min(4, os.cpu_count() or 1))
        self.timer = None  # an optional StageTimer: busy seconds of "face_detection"
        self.shot_detector = ShotDetector(scene_threshold)
        self.num_frames = 0
        self.frame_size = (0, 0)
        self._shot = 0
        self._open: list[_OpenTrack] = []
        self._closed: list[_OpenTrack] = []

    def close(self) -> None:
        self.detector.close()

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _detections(self, frame: np.ndarray, detector: FaceDetector | None = None) -> list[_Detection]:
        detector = detector or self.detector
        found = []
        with self.timer("face_detection") if self.timer is not None else nullcontext():
            for box in detector.detect(frame):
                landmarks = detector.landmarks(frame, box)
                if landmarks is not None and not _landmarks_fit(landmarks, box):
                    landmarks = None
                found.append(_Detection(box, landmarks, _appearance(frame, box)))
        return found

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Add every frame of ``frames`` (as [`update`] does), detecting faces in ``workers`` threads up to
        ``2 * workers`` frames ahead; yields each frame once it is added."""
        if self.workers == 1:
            for frame in frames:
                self.update(frame)
                yield frame
            return
        local, detectors, lock = threading.local(), [], threading.Lock()

        def detect(frame: np.ndarray) -> list[_Detection]:
            if not hasattr(local, "detector"):  # MediaPipe graphs are not shared between threads
                local.detector = FaceDetector(min_confidence=self.min_confidence)
                with lock:
                    detectors.append(local.detector)
            return self._detections(frame, local.detector)

        pending: deque[tuple[np.ndarray, Future]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="latentsync-faces") as pool:
            try:
                for frame in frames:
                    pending.append((frame, pool.submit(detect, frame)))
                    if len(pending) > 2 * self.workers:
                        yield self._add(*self._next(pending))
                while pending:
                    yield self._add(*self._next(pending))
            finally:
                for _, future in pending:
                    future.cancel()
                pool.shutdown(wait=True)
                for detector in detectors:
                    detector.close()

    @staticmethod
    def _next(pending: deque) -> tuple[np.ndarray, list[_Detection]]:
        frame, future = pending.popleft()
        return frame, future.result()

    def _add(self, frame: np.ndarray, detections: list[_Detection]) -> np.ndarray:
        self._associate(frame, detections)
        return frame

    def _cost(self, track: _OpenTrack, det: _Detection, index: int) -> float:
        gap = index - track.last_frame
        distance = np.linalg.norm(det.box.center - track.predicted_center(index)) / track.size
        ratio = det.box.size / track.size
        if distance > self.max_distance * min(1.0 + 0.1 * gap, 3.0) or not 0.5 < ratio < 2.0:
            return _UNMATCHED
        look = cv2.compareHist(track.look, det.look, cv2.HISTCMP_BHATTACHARYYA)
        return distance + self.appearance_weight * look

    def update(self, frame: np.ndarray) -> None:
        """Add the next RGB uint8 frame."""
        self._associate(frame, self._detections(frame))

    def _associate(self, frame: np.ndarray, detections: list[_Detection]) -> None:
        """Continue the tracks with the faces detected in the next frame."""
        index = self.num_frames
        self.num_frames += 1
        self.frame_size = (frame.shape[1], frame.shape[0])
        if self.shot_detector.update(frame):
            self._closed += self._open
            self._open = []
            self._shot += 1
        unmatched = set(range(len(detections)))
        if self._open and detections:
            cost = np.array([[self._cost(t, d, index) for d in detections] for t in self._open])
            for ti, di in zip(*linear_sum_assignment(cost)):
                if cost[ti, di] < _UNMATCHED:
                    self._open[ti].add(index, detections[di], frame, self.thumbnail_size)
                    unmatched.discard(di)
        for track in self._open:
            if track.last_frame != index:
                track.note_missed(index, frame, [d.box for d in detections])
        for di in sorted(unmatched):
            track = _OpenTrack(self._shot)
            track.add(index, detections[di], frame, self.thumbnail_size)
            self._open.append(track)
        ended = [t for t in self._open if index - t.last_frame >= self.max_gap]
        self._closed += ended
        self._open = [t for t in self._open if index - t.last_frame < self.max_gap]

    def result(self, label: str = "video") -> FaceTracks:
        """The tracks found so far, numbered by first frame, then from left to right."""
        shots = shot_ranges(self.shot_detector.cuts, self.num_frames)
        kept = []
        for t in self._closed + self._open:
            a, b = shots[t.shot]
            if len(t.frames) >= min(self.min_track_frames, b - a):
                kept.append(t)
        kept.sort(key=lambda t: (t.frames[0], t.boxes[0][0] + t.boxes[0][2] / 2))
        tracks = [
            FaceTrack(index=i, shot=t.shot, frames=np.array(t.frames), boxes=np.array(t.boxes),
                      scores=np.array(t.scores), anchors=np.stack(t.anchors), lips=np.stack(t.lips),
                      thumbnail=PIL.Image.fromarray(t.thumbnail),
                      lookalike_frames=np.array([f for f in t.lookalike if f < t.last_frame], int))
            for i, t in enumerate(kept)
        ]
        return FaceTracks(tracks, shots, self.num_frames, self.frame_size, label)


def track_faces(frames: Iterable[np.ndarray], label: str = "video",
                progress: Callable[..., Any] | None = None, total: int | None = None, **tracker_options: Any
                ) -> FaceTracks:
    """The face tracks of a video given as RGB uint8 frames (25 fps); ``tracker_options`` go to [`FaceTracker`].

    ``progress(iterable, desc, total)`` wraps the frames in a progress bar (none by default).
    """
    if progress is not None:
        frames = progress(frames, "Face tracks", total)
    with FaceTracker(**tracker_options) as tracker:
        for _ in tracker.track(frames):
            pass
        return tracker.result(label)


def combined_anchors(tracks: Sequence[FaceTrack], num_frames: int, smoothing: float = 0.0) -> np.ndarray:
    """Anchors ``(num_frames, 3, 2)`` of the given tracks (NaN where none of them has a face), each track smoothed
    over time on its own (``smoothing``: Gaussian sigma in frames), so a cut between two tracks is never blurred.
    Short gaps inside a track are filled ([`FaceTrack.filled_anchors`]) where no other of the tracks has its face.

    Raises:
        ValueError: two of the tracks share a frame.
    """
    out = np.full((num_frames, 3, 2), np.nan)
    taken = np.zeros(num_frames, bool)
    own = []
    for track in tracks:
        if taken[track.frames].any():
            raise ValueError(f"face tracks overlap in time (track {track.index}); one face per frame and voice")
        taken[track.frames] = True
        span = slice(track.first_frame, track.last_frame + 1)
        dense = smooth_anchors(track.dense_anchors(), smoothing)
        ok = np.isfinite(dense[:, 0, 0])
        out[span][ok] = dense[ok]
        own.append((span, ok, dense))
    count = 0
    # after every track's own frames, so that no gap where another of the tracks has its face is filled
    for track, (span, ok, dense) in zip(tracks, own):
        others = taken[span].copy()
        others[track.frames - track.first_frame] = False
        dense, n = track._fill_gaps(dense, blocked=others | (np.isfinite(out[span][:, 0, 0]) & ~ok))
        if n:
            new = ~ok & np.isfinite(dense[:, 0, 0])
            out[span][new] = dense[new]
            count += n
    if count:
        logger.info("%d frame(s) in short gaps (up to %d frames) of the face tracks get interpolated landmarks and "
                    "are lip-synced", count, MAX_FILLED_GAP)
    return out
