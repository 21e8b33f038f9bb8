"""Show that SyncNet training learns: a small SyncNet trained on CPU on the shared demo clips.

1. Aligns the faces of ``../shared/data/demo*_video.mp4`` with our own MediaPipe detector and aligner (256 x 256,
   25 fps, the video's own audio) and caches the clips under ``outputs/syncnet_demo/clips`` (not committed).
2. Trains ``train/configs/syncnet_tiny.yaml`` (16 frames, 64 x 128 mouths, 256-d) on the first 70 % of every clip
   and validates on the held-out last 30 % every 100 steps (positive and negative pairs, BCE loss and accuracy),
   keeping the weights of the best validation (30 s of video is quickly memorised: past that point the train loss
   keeps falling and the held-out loss rises).
3. Prints train/val loss against chance (ln 2 = 0.693) and validation accuracy against chance (0.5) at the best
   validation and at the end, plus the sync offset/confidence the best net finds on the held-out seconds, and writes
   the loss chart PNG.

    .venv/bin/python benchmarks/syncnet_demo.py [--steps 600] [--data ../shared/data] [--out outputs/syncnet_demo]
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_aligned_clip(video: str, output: str, resolution: int = 256, smoothing: float = 1.5) -> str:
    """Aligned-face clip (25 fps, ``resolution``^2, the video's own audio) of the single face in ``video``."""
    from latentsync.face import FaceAligner, smooth_anchors
    from latentsync.face import FaceDetector
    from latentsync.media import VideoWriter, iter_frames

    with FaceDetector() as detector:
        arr = detector.track(iter_frames(video, 25))
    ok = ~np.isnan(arr[:, 0, 0])
    if not ok.any():
        raise RuntimeError(f"no face in {video}")
    t = np.arange(len(arr))
    for j in range(3):  # bridge frames without a face
        for k in range(2):
            arr[:, j, k] = np.interp(t, t[ok], arr[ok, j, k])
    anchors = smooth_anchors(arr, smoothing)
    aligner = FaceAligner(resolution)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with VideoWriter(output, 25, audio_path=video, crf=15) as writer:
        for frame, a in zip(iter_frames(video, 25), anchors):
            writer.write(aligner.align(frame, aligner.matrix(a)))
    logging.getLogger("syncnet_demo").info("aligned %s -> %s (%d frames, %d without a detected face)", video, output, len(arr), (~ok).sum())
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "syncnet_demo"))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--train-fraction", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is much faster than the default when other jobs share the cores)")
    p.add_argument("overrides", nargs="*", help="extra key=value training settings")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    clip_dir = os.path.join(args.out, "clips")
    videos = sorted(glob.glob(os.path.join(args.data, "demo*_video.mp4")))
    cached = sorted(glob.glob(os.path.join(clip_dir, "demo*_aligned.mp4")))
    if not videos and not cached:
        print(f"no demo videos in {args.data} and no cached clips in {clip_dir}", file=sys.stderr)
        return 1
    t0 = time.time()
    for video in videos:
        target = os.path.join(clip_dir, os.path.basename(video).replace("_video", "_aligned"))
        if not os.path.isfile(target):
            make_aligned_clip(video, target)
    videos = videos or cached
    t_align = time.time() - t0

    from latentsync.training.syncnet_trainer import load_syncnet_config, train_syncnet

    run_dir = os.path.join(args.out, "run")
    f = args.train_fraction
    cfg = load_syncnet_config(os.path.join(ROOT, "train", "configs", "syncnet_tiny.yaml"), [
        f"train_data={clip_dir}", f"output_dir={run_dir}", f"max_train_steps={args.steps}",
        f"train_batch_size={args.batch_size}", f"learning_rate={args.lr}", f"seed={args.seed}",
        f"train_time_range=[0.0, {f}]", f"val_time_range=[{f}, 1.0]", f"validation_steps={args.eval_every}",
        f"checkpointing_steps={args.steps}", "num_val_samples=512", "overwrite_output_dir=true", *args.overrides,
    ])
    t1 = time.time()
    result = train_syncnet(cfg)
    t_train = time.time() - t1
    h = result["history"]
    n = max(1, len(h["train_loss"]) // 10)
    first_train = float(np.mean(h["train_loss"][:n]))
    last_train = float(np.mean(h["train_loss"][-n:]))

    # sync offset / confidence of the trained net on the held-out seconds of each clip
    from latentsync.eval.sync_confidence import offset_confidence, stable_features
    from latentsync.models.syncnet import StableSyncNet

    best = result["best"]
    model = StableSyncNet.from_pretrained(best["model_dir"]).eval()
    from latentsync.data.syncnet_dataset import ClipStore

    store = ClipStore(clip_dir, resolution=model.config.resolution, lower_half=True)
    sync = {}
    for i in range(len(store)):
        clip = store.load(i)
        start = math.ceil(f * len(clip.frames) / 5) * 5  # multiple of 5 frames = whole mel frames (16)
        mel = clip.mel[:, start * 16 // 5 :]
        vis, aud = stable_features(model, clip.frames[start:], mel)
        est = offset_confidence(vis, aud, vshift=8, metric="cosine")
        sync[os.path.basename(store.name(i))] = {"offset": est.offset, "confidence": round(est.confidence, 4)}

    report = {
        "clips": [os.path.basename(v) for v in videos],
        "split": f"train on the first {f:.0%} of each clip, validate on the last {1 - f:.0%}",
        "steps": result["global_step"],
        "train_loss_first_10pct": round(first_train, 4),
        "train_loss_last_10pct": round(last_train, 4),
        "val_loss": [round(x, 4) for x in h["val_loss"]],
        "val_accuracy": [round(x, 4) for x in h["val_accuracy"]],
        "val_steps": h["val_step"],
        "best_val": {"step": best["step"], "loss": round(best["val_loss"], 4),
                     "accuracy": round(best["val_accuracy"], 4)},
        "chance_loss": round(math.log(2), 4),
        "heldout_sync_offset_confidence": sync,
        "align_seconds": round(t_align, 1),
        "train_seconds": round(t_train, 1),
        "loss_chart": result["loss_chart"],
    }
    print(json.dumps(report, indent=2))
    with open(os.path.join(args.out, "report.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    ok = last_train < math.log(2) and best["val_loss"] < math.log(2) and best["val_accuracy"] > 0.5
    print(f"{'LEARNS' if ok else 'DOES NOT LEARN (yet): more steps or data needed'}: train loss {first_train:.4f} -> "
          f"{last_train:.4f}; held-out at the best validation (step {best['step']}): loss {best['val_loss']:.4f}, "
          f"accuracy {best['val_accuracy']:.4f}; at the end: loss {h['val_loss'][-1]:.4f}, "
          f"accuracy {h['val_accuracy'][-1]:.4f} (chance: {math.log(2):.4f}, 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
