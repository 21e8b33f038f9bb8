"""Face alignment and paste-back: OpenCV on the CPU (one frame at a time) against the batched torch warps of
``latentsync.face.warp`` on a device, for one 16-frame window of a real 1080 x 1920 clip (default: the demo clip).

    python benchmarks/warp_speed.py                    # torch warps on the CPU (the GPU code path, CPU speed)
    python benchmarks/warp_speed.py --device cuda      # on the GPU

Prints milliseconds per frame of each, their ratio (measured in the same run), and the largest difference in grey
levels between the two.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from latentsync.face.alignment import FaceAligner
from latentsync.face.warp import TorchFaceAligner
from latentsync.media import iter_frames

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def best_of(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=str(SHARED / "demo1_video.mp4"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    frames = [f for _, f in zip(range(args.frames), iter_frames(args.video, 25))]
    h, w = frames[0].shape[:2]
    cpu, dev = FaceAligner(args.resolution), TorchFaceAligner(args.resolution, device=args.device)
    # a face about a third of the frame wide in its middle, slightly turned
    side = w / 3
    anchors = np.array([[w / 2 - side / 4, h / 2 - side / 4], [w / 2 + side / 4, h / 2 - side / 5], [w / 2, h / 2]])
    matrices = [cpu.matrix(anchors + k * 0.3) for k in range(len(frames))]
    faces = cpu.align_batch(frames, matrices)[:, :, ::-1].copy()
    dev.align_batch(frames, matrices), dev.paste_batch(frames, faces, matrices)  # warm-up
    n = len(frames)
    rows = [("alignment", lambda: cpu.align_batch(frames, matrices), lambda: dev.align_batch(frames, matrices)),
            ("paste-back", lambda: cpu.paste_batch(frames, faces, matrices),
             lambda: dev.paste_batch(frames, faces, matrices))]
    print(f"{n} frames of {w}x{h}, faces {args.resolution} px; torch on {args.device}, {torch.get_num_threads()} "
          f"CPU threads")
    print("| stage | OpenCV ms/frame | torch ms/frame | OpenCV / torch | max difference |")
    print("|---|---|---|---|---|")
    for name, a, b in rows:
        ta, tb = best_of(a, args.repeats, args.device), best_of(b, args.repeats, args.device)
        diff = max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a(), b()))
        print(f"| {name} | {1000 * ta / n:.2f} | {1000 * tb / n:.2f} | {ta / tb:.2f}x | {diff} grey level(s) |")


if __name__ == "__main__":
    main()
