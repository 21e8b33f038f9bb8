"""Shot boundaries (hard scene cuts) found while a video is read, one frame at a time.

PySceneDetect's content detector compares each frame's hue, saturation and brightness with the previous frame's; a
jump above ``threshold`` is a cut. Frames are shrunk to 320 pixels wide first (the comparison is of whole-frame
statistics, so this changes nothing but the cost: well under a millisecond per frame). Cuts are reported at the frame
where they happen (no look-ahead), and a new cut is accepted only ``min_shot_frames`` after the previous one, so a
flash or a few frames of fast motion do not split a shot into pieces.
"""

from __future__ import annotations

import cv2
import numpy as np

from .constants import VIDEO_FPS

SCENE_DETECT_WIDTH = 320
"""Frames are shrunk to this width before they are compared."""


def shot_ranges(cuts: list[int], num_frames: int) -> list[tuple[int, int]]:
    """``(first, end)`` frame ranges of the shots of a video of ``num_frames`` frames cut at ``cuts``."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < num_frames), num_frames]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class ShotDetector:
    """Feed it the frames of a video in order; it tells at which frames a new shot starts.

    Args:
        threshold: PySceneDetect's content threshold (27 by default; lower finds softer cuts).
        min_shot_frames: a cut closer than this to the previous one is ignored.
        fps: frame rate of the frames (only used to label PySceneDetect's time codes).
    """

    def __init__(self, threshold: float = 27.0, min_shot_frames: int = 15, fps: float = VIDEO_FPS):
        # deferred: scenedetect takes about half a second to import and only the face analysis pass needs it
        from scenedetect import ContentDetector
        from scenedetect.common import FrameTimecode  # deferred: see above
        from scenedetect.detector import FlashFilter  # deferred: see above

        self._detector = ContentDetector(threshold=threshold, min_scene_len=min_shot_frames,
                                         filter_mode=FlashFilter.Mode.SUPPRESS)
        self._timecode = FrameTimecode
        self.fps = float(fps)
        self.num_frames = 0
        self.cuts: list[int] = []

    def update(self, frame: np.ndarray) -> bool:
        """Look at the next RGB uint8 frame; True when a new shot starts at it."""
        h, w = frame.shape[:2]
        if w > SCENE_DETECT_WIDTH:
            size = (SCENE_DETECT_WIDTH, max(2, round(h * SCENE_DETECT_WIDTH / w)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        index = self.num_frames
        self.num_frames += 1
        found = self._detector.process_frame(self._timecode(index, self.fps), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        new = [int(tc.frame_num) for tc in found if int(tc.frame_num) > 0]
        self.cuts.extend(new)
        return index in new

    def shots(self) -> list[tuple[int, int]]:
        """``(first, end)`` frame ranges of the shots seen so far."""
        return shot_ranges(self.cuts, self.num_frames)
