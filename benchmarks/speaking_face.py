"""How well the lip-motion score tells the speaking face from a silent one, on the shared clips.

The two shared clips (``../shared/data/demo1_video.mp4``, ``demo2_video.mp4``) are cropped around their faces and put
side by side, in both orders, and their faces are tracked once per order. Each face's lips are then scored
([`latentsync.face.speaking.lip_score`]) against each clip's own soundtrack over sliding windows of 4, 6 and 8 s
(every 1 s): against its own sound the face is "speaking", against the other clip's sound it is a face moving its
lips to words nobody hears. For every window the script counts whether the speaking face scores higher, and whether
the rule of ``face="speaking"`` ([`latentsync.face.speaking.LIP_RULE`]) would call it clearly speaking, and prints
the score ranges, plus the cost of the face analysis (tracking two faces) per frame.

    .venv/bin/python benchmarks/speaking_face.py [--data ../shared/data] [--out outputs/speaking_face]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np

from latentsync.face.speaking import LIP_RULE, frame_loudness, lip_score
from latentsync.face.tracking import FaceTrack, track_faces
from latentsync.media import load_audio, open_frames
from latentsync.testing import SHARED_CLIP_FACES, crop_faces, side_by_side_clip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS = 25
SECONDS = 10  # demo1 lasts 10 s


def window_scores(track: FaceTrack, loudness: np.ndarray, length: int) -> list[float | None]:
    """The track's lip score in every window of ``length`` frames (every second)."""
    lips = track.dense_lips()
    return [lip_score(lips[s : s + length], loudness[track.first_frame + s : track.first_frame + s + length])
            for s in range(0, len(lips) - length + 1, FPS)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "speaking_face"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    videos = {name: os.path.join(args.data, f"{name}_video.mp4") for name in ("demo1", "demo2")}
    close = {name: {"close": framings["close"]} for name, framings in SHARED_CLIP_FACES.items()}
    crops = crop_faces(videos, args.out, SECONDS, crops=close)
    sounds = {name: frame_loudness(load_audio(path), SECONDS * FPS) for name, path in videos.items()}

    results: dict[int, list[tuple[float, float, bool]]] = {4: [], 6: [], 8: []}
    for order in (("demo1", "demo2"), ("demo2", "demo1")):
        clip = side_by_side_clip(os.path.join(args.out, f"{order[0]}_{order[1]}.mp4"), crops[order[0], "close"],
                                 crops[order[1], "close"], crops[order[0], "close"], seconds=SECONDS)
        start = time.perf_counter()
        tracks = track_faces(open_frames(clip), clip)
        elapsed = time.perf_counter() - start
        print(f"{order[0]} | {order[1]}: {len(tracks)} tracks, face analysis {1000 * elapsed / tracks.num_frames:.1f} "
              f"ms per frame ({tracks.num_frames} frames, two faces)")
        by_name = dict(zip(order, sorted(tracks, key=lambda t: t.boxes[:, 0].mean())))  # left, right
        for seconds in results:
            for speaker, silent in (order, order[::-1]):
                own = window_scores(by_name[speaker], sounds[speaker], seconds * FPS)
                other = window_scores(by_name[silent], sounds[speaker], seconds * FPS)
                for a, b in zip(own, other):
                    clear = a >= LIP_RULE.min_score and a - b >= LIP_RULE.min_margin
                    results[seconds].append((a, b, clear))

    print(f"\nlip-motion score, speaking face vs silent face (rule: score >= {LIP_RULE.min_score}, "
          f"lead >= {LIP_RULE.min_margin})")
    print("| window | windows | speaking face higher | clearly speaking | speaking: mean (min) | silent: mean (max) |")
    print("|---|---|---|---|---|---|")
    for seconds, rows in results.items():
        r = np.array(rows, dtype=float)
        print(f"| {seconds} s | {len(r)} | {int((r[:, 0] > r[:, 1]).sum())} | {int(r[:, 2].sum())} | "
              f"{r[:, 0].mean():.2f} ({r[:, 0].min():.2f}) | {r[:, 1].mean():.2f} ({r[:, 1].max():.2f}) |")


if __name__ == "__main__":
    main()
