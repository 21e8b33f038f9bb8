"""How well the gap-filling check of the face tracks tells a missed face from a picture without it, on the shared clips.

A face track fills a short gap (frames where the detector missed the face) only where the picture at the face's
predicted place still looks like the face ([`latentsync.face.tracking`]). This script tracks the face of each shared
one-face clip (``../shared/data/demo1_video.mp4``, ``demo2_video.mp4``; the first ``--seconds`` of each, full
resolution, with the project's own face analysis), then, at gap starts every 9 frames, hides the face for k = 1, 3,
6, 12 frames in one of these ways and asks the check about each hidden frame, as a track that missed its face would:

* should fill: ``missed`` (the picture unchanged: the detector just missed it), ``motion blur`` (a 31-pixel
  horizontal blur of the whole frame);
* should not fill: ``grey`` and ``black`` (a cut to nothing), ``other clip`` (the other clip's frame: a cut to another
  scene that the scene-cut detector missed), ``hand`` (the mouth and chin covered by a patch of the face's own cheek
  colour with a little shading and noise), ``moved away`` (the frame shifted by half its width).

A gap is filled where every one of its frames passes. The table gives, per case, how often the rule fills and the
range of both measures (min / median / max over all hidden frames), so a threshold can be read off: the colour
distance to the face's look, and the contrast of a coarse grey picture of the mouth and chin as a share of the
face's own (averaged over its detections).

    .venv/bin/python benchmarks/gap_fill.py [--data ../shared/data] [--seconds 6]

What it cannot show: the occlusions are synthetic (a flat patch is not a real hand, with its fingers, shadows and
motion), the detector's own answer on the changed frames is not asked (it is taken to miss the face in each), and
two talking-head clips of similar lighting are a small sample of the footage users bring.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

import cv2
import numpy as np

from latentsync.face.detection import FaceBox
from latentsync.face.tracking import (
    _FILL_LOOK_DISTANCE,
    _FILL_MIN_CONTRAST,
    MAX_FILLED_GAP,
    _appearance,
    _Detection,
    _mouth_contrast,
    _OpenTrack,
    track_faces,
)
from latentsync.media import open_frames

logger = logging.getLogger("gap_fill")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIPS = ("demo1", "demo2")
GAP_LENGTHS = (1, 3, 6, 12)
SHOULD_FILL = ("missed", "motion blur")


def read(path: str, count: int) -> np.ndarray:
    """The first ``count`` frames (25 fps, RGB)."""
    frames = []
    for frame in open_frames(path):
        frames.append(frame)
        if len(frames) == count:
            break
    return np.stack(frames)


def hand(frame: np.ndarray, box: FaceBox, cheek: np.ndarray, seed: int) -> np.ndarray:
    """The mouth and chin covered by a patch of ``cheek`` colour with a soft vertical shading and pixel noise."""
    out = frame.copy()
    w, h = box.x1 - box.x0, box.y1 - box.y0
    x0, x1 = int(max(0, box.x0 - 0.05 * w)), int(min(frame.shape[1], box.x1 + 0.05 * w))
    y0, y1 = int(box.y0 + 0.55 * h), int(min(frame.shape[0], box.y1 + 0.1 * h))
    shade = np.linspace(1.05, 0.9, y1 - y0)[:, None, None]
    noise = np.random.default_rng(seed).normal(0, 6, (y1 - y0, x1 - x0, 3))
    out[y0:y1, x0:x1] = np.clip(cheek * shade + noise, 0, 255).astype(np.uint8)
    return out


def cheek_colour(frame: np.ndarray, box: FaceBox) -> np.ndarray:
    """Median colour of the face's image-left cheek (below the eye, beside the nose)."""
    w, h = box.x1 - box.x0, box.y1 - box.y0
    patch = frame[int(box.y0 + 0.55 * h): int(box.y0 + 0.7 * h), int(box.x0 + 0.12 * w): int(box.x0 + 0.28 * w)]
    return np.median(patch.reshape(-1, 3), axis=0)


def motion_blur(frame: np.ndarray) -> np.ndarray:
    kernel = np.full((1, 31), 1 / 31, np.float32)
    return cv2.filter2D(frame, -1, kernel)


def cases(other: np.ndarray) -> dict[str, Callable[[np.ndarray, int, FaceBox, np.ndarray], np.ndarray]]:
    """Each case: (frame, frame index, the face's last box, its cheek colour) -> the changed frame."""
    return {
        "missed": lambda f, i, b, c: f,
        "motion blur": lambda f, i, b, c: motion_blur(f),
        "grey": lambda f, i, b, c: np.full_like(f, 128),
        "black": lambda f, i, b, c: np.zeros_like(f),
        "other clip": lambda f, i, b, c: cv2.resize(other[i % len(other)], (f.shape[1], f.shape[0])),
        "hand": lambda f, i, b, c: hand(f, b, c, i),
        "moved away": lambda f, i, b, c: np.roll(f, f.shape[1] // 2, axis=1),
    }


Gap = tuple[int, list[float], list[float]]  # gap length; look distance and mouth-contrast ratio of each hidden frame


def evaluate(frames: np.ndarray, other: np.ndarray, label: str) -> dict[str, list[Gap]]:
    """For every case and gap: its length and what the check measures in each of its frames."""
    tracks = track_faces(frames, label)
    track = max(tracks, key=lambda t: t.num_frames)
    logger.info("%s: %s", label, track.describe())
    boxes = {int(f): FaceBox(x, y, x + w, y + h, float(s))
             for f, (x, y, w, h), s in zip(track.frames, track.boxes, track.scores)}
    results: dict[str, list[Gap]] = {name: [] for name in cases(other)}
    for start in range(MAX_FILLED_GAP, len(frames) - MAX_FILLED_GAP, 9):
        if any(f not in boxes for f in range(start - 8, start + MAX_FILLED_GAP)):
            continue  # the face is missed around here anyway
        for k in GAP_LENGTHS:
            for name, change in cases(other).items():
                open_track = _OpenTrack(0)
                for f in range(track.first_frame, start):
                    if f in boxes:
                        open_track.add(f, _Detection(boxes[f], None, _appearance(frames[f], boxes[f])), frames[f], 16)
                last = boxes[start - 1]
                cheek = cheek_colour(frames[start - 1], last)
                distances, contrasts = [], []
                for f in range(start, start + k):
                    picture, box = change(frames[f], f, boxes[f], cheek), open_track.predicted_box(f)
                    distances.append(open_track.look_distance(picture, box))
                    contrasts.append(_mouth_contrast(picture, box) / max(open_track.mouth_contrast, 1e-6))
                results[name].append((k, distances, contrasts))
    return results


def table(results: dict[str, list[Gap]]) -> list[str]:
    """Markdown rows: per case, the gaps filled by the colour check alone (before) and with the mouth-contrast check
    (now), per gap length, and the range of both measures over all hidden frames."""
    lines = [("| case | should fill | gaps filled, colour only (k = 1 / 3 / 6 / 12) | now | colour distance "
              "min / median / max | mouth contrast min / median / max |"), "|---|---|---|---|---|---|"]
    for name, gaps in results.items():
        before, now = [], []
        for k in GAP_LENGTHS:
            of_k = [(max(d) < _FILL_LOOK_DISTANCE, min(c) >= _FILL_MIN_CONTRAST) for n, d, c in gaps if n == k]
            before.append(f"{sum(a for a, _ in of_k)}/{len(of_k)}")
            now.append(f"{sum(a and b for a, b in of_k)}/{len(of_k)}")
        d = np.concatenate([d for _, d, _ in gaps])
        c = np.concatenate([c for _, _, c in gaps])
        lines.append(f"| {name} | {'yes' if name in SHOULD_FILL else 'no'} | {' / '.join(before)} | {' / '.join(now)} "
                     f"| {d.min():.2f} / {np.median(d):.2f} / {d.max():.2f} "
                     f"| {c.min():.2f} / {np.median(c):.2f} / {c.max():.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    count = round(args.seconds * 25)
    paths = {name: os.path.join(args.data, f"{name}_video.mp4") for name in CLIPS}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"gap_fill: clip not found: {missing[0]} (pass --data)")
    merged: dict[str, list[Gap]] = {}
    for name in CLIPS:
        other_name = next(n for n in CLIPS if n != name)
        other = read(paths[other_name], count)[::10].copy()
        results = evaluate(read(paths[name], count), other, name)
        for case, gaps in results.items():
            merged.setdefault(case, []).extend(gaps)
    logger.info("clips: %s, first %g s each; fill where colour distance < %.2f (and now mouth contrast >= %.2f of "
                "the face's)", ", ".join(CLIPS), args.seconds, _FILL_LOOK_DISTANCE, _FILL_MIN_CONTRAST)
    for line in table(merged):
        logger.info("%s", line)


if __name__ == "__main__":
    main()
