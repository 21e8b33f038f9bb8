"""End-to-end inference benchmark: seconds per stage, frames per second and peak memory.

Runs the pipeline on a real clip (default: 10 s of ../shared/data/demo1, 1080 x 1920, 25 fps) with the tiny
random model at 256 px, twice in one run: the naive sequential path (``overlap_stages=False``) and the default
path with CPU stages overlapped with the denoising. Each run happens in its own subprocess so that its peak RSS is
its own.

    python benchmarks/inference.py                          # tiny model, 10 s clip, CPU
    python benchmarks/inference.py --model DIR_OR_ID --device cuda --dtype fp16 --steps 20
    python benchmarks/inference.py --lengths 10 60 300      # peak memory vs video length (looped clip)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STAGES = ["decode", "face_detection", "audio_features", "alignment", "vae_encode", "denoise", "vae_decode",
          "paste_back", "encode"]


def run_once(args: argparse.Namespace) -> dict:
    import torch

    from latentsync import LatentSyncPipeline
    from latentsync.tiny import build_tiny_pipeline

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.model:
        pipe = LatentSyncPipeline.from_pretrained(args.model, dtype=dtype)
    else:
        pipe = build_tiny_pipeline(resolution=args.resolution).to(dtype=dtype)
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        out = pipe(video=args.video, audio=args.audio, output_path=os.path.join(tmp, "out.mp4"),
                   num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                   overlap_stages=args.overlap)
    return {
        "frames": out.num_frames,
        "timings": out.timings,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
    }


def child(args: argparse.Namespace, **overrides) -> dict:
    cmd = [sys.executable, __file__, "--child", "--video", str(overrides.get("video", args.video)),
           "--audio", str(overrides.get("audio", args.audio)), "--steps", str(args.steps), "--device", args.device,
           "--dtype", args.dtype, "--resolution", str(args.resolution)]
    if args.model:
        cmd += ["--model", args.model]
    if overrides.get("overlap", True):
        cmd.append("--overlap")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ffmpeg(*a: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *a], check=True)


def stage_table(naive: dict, fast: dict) -> None:
    n = naive["frames"]
    print(f"{n} frames; busy seconds per stage (stages overlap in time in the overlapped run)")
    print(f"{'stage':<15}{'naive s':>9}{'fps':>9}{'overlap s':>11}{'fps':>9}")
    for stage in STAGES + ["total"]:
        a, b = naive["timings"].get(stage, 0.0), fast["timings"].get(stage, 0.0)
        print(f"{stage:<15}{a:>9.2f}{n / a if a else float('nan'):>9.1f}{b:>11.2f}{n / b if b else float('nan'):>9.1f}")
    print(f"end-to-end speed-up of overlapping (same run): {naive['timings']['total'] / fast['timings']['total']:.2f}x")
    print(f"peak RSS: naive {naive['peak_rss_gib']:.2f} GiB, overlapped {fast['peak_rss_gib']:.2f} GiB")
    if fast["peak_gpu_gib"] is not None:
        print(f"peak GPU memory: naive {naive['peak_gpu_gib']:.2f} GiB, overlapped {fast['peak_gpu_gib']:.2f} GiB")


def lengths_table(args: argparse.Namespace) -> None:
    print(f"{'seconds':>8}{'frames':>8}{'total s':>9}{'fps':>7}{'peak RSS GiB':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.lengths:
            video, audio = Path(tmp) / f"v{seconds}.mp4", Path(tmp) / f"a{seconds}.wav"
            ffmpeg("-stream_loop", "-1", "-i", str(args.video), "-t", str(seconds), "-an", "-c:v", "libx264",
                   "-preset", "veryfast", "-crf", "20", str(video))
            ffmpeg("-stream_loop", "-1", "-i", str(args.audio), "-t", str(seconds), "-ac", "1", "-ar", "16000",
                   str(audio))
            r = child(args, video=video, audio=audio)
            total = r["timings"]["total"]
            print(f"{seconds:>8}{r['frames']:>8}{total:>9.1f}{r['frames'] / total:>7.1f}{r['peak_rss_gib']:>14.2f}",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=str(SHARED / "demo1_video.mp4"))
    p.add_argument("--audio", default=str(SHARED / "demo1_audio.wav"))
    p.add_argument("--model", default=None, help="pipeline id or folder (default: tiny random model)")
    p.add_argument("--resolution", type=int, default=256, help="face resolution of the tiny model")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--lengths", type=int, nargs="*", help="measure peak memory for these video lengths (seconds)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overlap", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_once(args)))
        return
    for path in (args.video, args.audio):
        if not Path(path).is_file():
            raise SystemExit(f"input not found: {path}")
    print(f"video {args.video}, audio {args.audio}, model {args.model or 'tiny (random)'}, {args.steps} steps, "
          f"{args.device} {args.dtype}")
    if args.lengths:
        lengths_table(args)
        return
    naive = child(args, overlap=False)
    fast = child(args, overlap=True)
    stage_table(naive, fast)


if __name__ == "__main__":
    main()
