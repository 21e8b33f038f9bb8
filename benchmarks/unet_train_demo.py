"""CPU demo: train a tiny LatentSync U-Net on real aligned face clips and plot its loss curve.

1. Cuts the sample videos in ../shared/data (or --data) into 4-second clips, aligns every frame to the LatentSync
   face template with our MediaPipe aligner and writes them (with their audio) as 25 fps mp4s under --out.
2. Saves tiny random stand-ins of every pretrained model (VAE, Whisper, SyncNet, VGG, VideoMAE).
3. Trains with the real training loop (`latentsync.training.unet_trainer.train`) for --steps steps.
4. Prints the loss curve (means over windows of steps), the held-out loss of a fixed batch before and after
   training, and writes loss.png.

    python benchmarks/unet_train_demo.py --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import imageio_ffmpeg
import numpy as np
import torch

from latentsync.face import FaceAligner, smooth_anchors
from latentsync.face import FaceDetector
from latentsync.media import VideoWriter, iter_frames

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_aligned_clips(video: str, audio: str, out_dir: str, resolution: int, clip_seconds: float,
                       prefix: str) -> list[str]:
    """Align every 25 fps frame of ``video`` and write consecutive ``clip_seconds`` clips with their audio."""
    frames = list(iter_frames(video, 25))
    aligner = FaceAligner(resolution)
    with FaceDetector() as detector:
        anchors = smooth_anchors(detector.track(frames), 1.5)
    per_clip = int(clip_seconds * 25)
    written = []
    for k in range(len(frames) // per_clip):
        idx = range(k * per_clip, (k + 1) * per_clip)
        if any(np.isnan(anchors[i, 0, 0]) for i in idx):
            continue  # training clips need a face in every frame
        path = os.path.join(out_dir, f"{prefix}_{k:02d}.mp4")
        wav = path[:-4] + ".wav"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-ss", f"{k * clip_seconds}",
                        "-t", f"{clip_seconds}", "-i", audio, "-ac", "1", "-ar", "16000", wav], check=True)
        with VideoWriter(path, 25, audio_path=wav, crf=15) as writer:
            for i in idx:
                writer.write(aligner.align(frames[i], aligner.matrix(anchors[i])))
        os.remove(wav)
        written.append(path)
    return written


def held_out_loss(pipeline_dir: str, cfg, batch, seed: int = 0) -> float:
    """Stage-1 loss of a fixed batch with fixed noise and timesteps (mean over 8 draws)."""
    from latentsync.training.components import load_components
    from latentsync.audio_features import AudioFeatureCache
    from latentsync.training.unet_trainer import compute_losses
    from dataclasses import replace

    comps = load_components(replace(cfg, components_from=pipeline_dir, pretrained_unet=None))
    comps.unet.eval()
    ctx = AudioFeatureCache(batch["_dataset"], comps.feature_extractor, comps.audio_encoder).contexts(batch["clip_index"], batch["start"], cfg.num_frames)
    torch.manual_seed(seed)
    with torch.no_grad():
        vals = [compute_losses(batch, ctx, comps, comps.unet, cfg)["recon"].item() for _ in range(8)]
    return float(np.mean(vals))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "unet_train_demo"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--stage", type=int, default=1, choices=(1, 2))
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from latentsync.data.unet_dataset import UNetClipDataset
    from latentsync.training.config import load_config
    from latentsync.testing import save_tiny_training_models
    from latentsync.training.unet_trainer import _collate, train

    clips_dir = os.path.join(args.out, f"clips_{args.resolution}")
    os.makedirs(clips_dir, exist_ok=True)
    t0 = time.time()
    clips = sorted(f for f in os.listdir(clips_dir) if f.endswith(".mp4"))
    if not clips:
        for name in ("demo1", "demo2"):
            video, audio = os.path.join(args.data, f"{name}_video.mp4"), os.path.join(args.data, f"{name}_audio.wav")
            if not os.path.isfile(video):
                sys.exit(f"sample video not found: {video}")
            make_aligned_clips(video, audio, clips_dir, args.resolution, 4.0, name)
        clips = sorted(f for f in os.listdir(clips_dir) if f.endswith(".mp4"))
    print(f"{len(clips)} aligned {args.resolution}px clips of 4 s in {clips_dir} ({time.time() - t0:.0f} s)")

    run_dir = os.path.join(args.out, f"run_stage{args.stage}")
    if os.path.isdir(run_dir):
        import shutil

        shutil.rmtree(run_dir)
    overrides = save_tiny_training_models(os.path.join(args.out, "tiny_models"), resolution=args.resolution,
                                          motion_modules="none" if args.stage == 1 else "all")
    overrides.update(train_data=clips_dir, output_dir=run_dir, max_train_steps=args.steps, stage=args.stage,
                     learning_rate=args.lr, train_batch_size=args.batch_size, resolution=args.resolution,
                     checkpointing_steps=args.steps, validation_steps=args.steps,
                     motion_modules="none" if args.stage == 1 else "all", cache_clips=len(clips),
                     trainable_modules=None if args.stage == 1 else ["motion_modules.", "attentions."])
    cfg = load_config(os.path.join(ROOT, "train", "configs", "unet_tiny.yaml"),
                      [f"{k}={json.dumps(v)}" for k, v in overrides.items()])

    # a fixed held-out batch: the last clip, never mind that it is also in training (the point is the same inputs)
    ds = UNetClipDataset(clips_dir, args.resolution, cfg.num_frames, return_mel=False, seed=99)
    batch = _collate([ds[len(ds) - 1], ds[0]])
    batch["_dataset"] = ds
    before = held_out_loss(overrides["components_from"], cfg, batch)

    t0 = time.time()
    result = train(cfg)
    seconds = time.time() - t0
    after = held_out_loss(result["pipeline"], cfg, batch)

    with open(result["loss_log"]) as fh:
        rows = [json.loads(line) for line in fh]
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    window = max(1, len(loss) // 10)
    print(f"trained {len(loss)} steps in {seconds:.0f} s ({seconds / max(len(loss), 1):.2f} s/step), "
          f"stage {args.stage}, batch {args.batch_size}, {args.resolution}px, 16 frames")
    print("mean loss per window of", window, "steps:")
    for i in range(0, len(loss), window):
        print(f"  steps {steps[i]:4d}-{steps[min(i + window, len(loss)) - 1]:4d}: {loss[i:i + window].mean():.4f}")
    print(f"held-out fixed-batch noise MSE: before {before:.4f}, after {after:.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, alpha=0.35, label="loss per step")
    if len(loss) >= window:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=f"moving mean ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"tiny LatentSync U-Net, stage {args.stage}, real aligned clips (CPU)")
    ax.legend()
    fig.tight_layout()
    png = os.path.join(args.out, f"loss_stage{args.stage}.png")
    fig.savefig(png, dpi=120)
    print("loss curve:", png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
