"""End-to-end inference benchmark: seconds per stage, frames per second, peak memory and the quality trade-off.

Runs the pipeline on a real clip (default: ../shared/data/demo1, 1080 x 1920, 25 fps) with the tiny random model at
256 px. Every variant runs in its own subprocess so that its peak RSS is its own; all ratios are against the naive
path (sequential stages, every option off) measured in the same run.

    python benchmarks/inference.py                          # tiny model, 10 s clip, CPU: naive vs faster variants
    python benchmarks/inference.py --model DIR_OR_ID --device cuda --dtype fp16 --steps 20
    python benchmarks/inference.py --full-size --device cuda --dtype bf16   # full-size architecture, random weights
    python benchmarks/inference.py --lengths 10 60 300      # peak memory vs video length (looped clip)
    python benchmarks/inference.py --quality --seconds 4    # speed vs fidelity of DeepCache / DPM-Solver++
    python benchmarks/inference.py --quality --model ByteDance/LatentSync-1.6 --device cuda --dtype fp16 \\
        --syncnet ByteDance/LatentSync-1.5 --syncnet-file auxiliary/syncnet_v2.model   # + sync confidence

Variants are written ``base[+option...]``: ``naive`` (stages in sequence, DDIM), ``overlap`` (CPU stages in
background threads), ``ddim`` / ``dpm++`` / ``unipc`` (scheduler), ``NN`` (steps), ``deepcacheN`` (DeepCache
interval N), ``batchN`` (N windows per U-Net call; ``batch``: as many as fit in GPU memory), ``fused`` (fused pooled
GroupNorm, channels-last), ``compiled`` (torch.compile of the U-Net step, fixed shapes), ``warps`` (alignment and
paste-back as torch warps on the device), ``nvdec`` (the input decoded by ffmpeg's CUDA hardware decoder), ``nvenc`` (the
output encoded by NVENC instead of libx264), ``fast``
(all of overlap, batch, fused, compiled and warps: the GPU configuration), e.g. ``overlap+deepcache3``, ``dpm++10+deepcache3`` or ``fast``. Under the stage table, every
variant's end-to-end frames/s is set against its denoiser-only frames/s (output frames over the denoising seconds);
compilation happens in the warm-up run and is reported apart.

Quality (``--quality``): with random weights a sync metric means nothing, so the script reports what is
measurable -- PSNR of each variant's regenerated pixels against the DDIM-20 reference run with the same seed, and the
denoising speed-up. With a real model and ``--syncnet`` (a SyncNet for ``latentsync.eval.estimate_sync``) it also
reports the audio-visual offset and sync confidence of every variant's output video.

On a machine without MediaPipe (a bare GPU box), compute the face tracks where it is installed and replay them:
``--save-face-tracks tracks.npz`` writes them for the (trimmed) clip and exits; ``--face-tracks tracks.npz`` replays
them instead of running the detector (the face-detection stage then shows nothing: add the CPU's face-analysis
seconds, measured where MediaPipe runs, to judge the end-to-end rate).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STAGES = ["decode", "face_detection", "audio_features", "alignment", "vae_encode", "denoise", "vae_decode",
          "paste_back", "encode"]
DEFAULT_VARIANTS = ["naive", "overlap", "overlap+deepcache3", "overlap+dpm++10"]
QUALITY_VARIANTS = ["ddim20", "ddim20+deepcache3", "ddim20+deepcache5", "ddim10", "dpm++20", "dpm++10",
                    "dpm++10+deepcache3", "unipc10"]


def parse_variant(name: str, default_steps: int) -> dict:
    """``"overlap+dpm++10+deepcache3"`` -> pipeline settings."""
    spec = {"name": name, "overlap": False, "scheduler": "ddim", "steps": default_steps, "deep_cache": 0,
            "windows": 1, "compiled": False, "fused": False, "warps": False, "nvdec": False, "nvenc": False}
    for part in re.findall(r"dpm\+\+\d*|[^+]+", name):
        if part == "naive":
            continue
        if part == "overlap":
            spec["overlap"] = True
        elif part == "fast":  # every throughput option: the GPU configuration
            spec.update(overlap=True, windows=None, compiled=True, fused=True, warps=True)
        elif m := re.fullmatch(r"batch(\d*)", part):
            spec["windows"] = int(m.group(1)) if m.group(1) else None  # "batch": chosen from free memory
        elif part in ("compiled", "fused", "warps", "nvdec", "nvenc"):
            spec[part] = True
        elif m := re.fullmatch(r"deepcache(\d+)", part):
            spec["deep_cache"] = int(m.group(1))
        elif m := re.fullmatch(r"(ddim|dpm\+\+|unipc|euler)(\d*)", part):
            spec["scheduler"] = m.group(1)
            spec["steps"] = int(m.group(2)) if m.group(2) else default_steps
        else:
            raise SystemExit(f"cannot parse variant part {part!r} of {name!r}")
    return spec


class ReplayedFaceTracker:
    """Stands in for ``latentsync.face.tracking.FaceTracker`` in the pipeline's first pass: reads the frames (so
    decoding and the frame cache still happen) and returns the face tracks saved by ``--save-face-tracks``."""

    tracks_path: str = ""

    def __init__(self, **kwargs):
        self.num_frames = 0
        self.timer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def track(self, frames):
        for frame in frames:
            self.num_frames += 1
            yield frame

    def result(self, label: str = "video"):
        tracks = load_face_tracks(self.tracks_path)
        if tracks.num_frames != self.num_frames:
            raise SystemExit(f"the saved face tracks cover {tracks.num_frames} frames, the video has {self.num_frames}")
        tracks.label = label
        return tracks


def save_face_tracks(video, path: str) -> None:
    """The clip's face tracks (frames, boxes, scores, anchors, lip gaps and shots) as a NumPy ``.npz`` file."""
    import numpy as np

    from latentsync.face.tracking import track_faces
    from latentsync.media import iter_frames

    tracks = track_faces(iter_frames(video, 25))
    arrays = {"shots": np.asarray(tracks.shots), "size": np.asarray([tracks.num_frames, *tracks.frame_size])}
    for t in tracks:
        for field in ("frames", "boxes", "scores", "anchors", "lips"):
            arrays[f"{t.index}_{field}"] = getattr(t, field)
        arrays[f"{t.index}_shot"] = np.asarray(t.shot)
    np.savez_compressed(path, **arrays)
    print(f"saved {len(tracks)} face track(s) of {tracks.num_frames} frames to {path}")


def load_face_tracks(path: str):
    """Face tracks written by [`save_face_tracks`] (thumbnails blank)."""
    import numpy as np
    import PIL.Image

    from latentsync.face.tracking import FaceTrack, FaceTracks

    data = np.load(path)
    count = len([k for k in data.files if k.endswith("_shot")])
    tracks = [FaceTrack(index=i, shot=int(data[f"{i}_shot"]), frames=data[f"{i}_frames"], boxes=data[f"{i}_boxes"],
                        scores=data[f"{i}_scores"], anchors=data[f"{i}_anchors"], lips=data[f"{i}_lips"],
                        thumbnail=PIL.Image.new("RGB", (128, 128))) for i in range(count)]
    n, width, height = (int(v) for v in data["size"])
    return FaceTracks(tracks, [tuple(int(v) for v in s) for s in data["shots"]], n, (width, height))


def use_saved_face_tracks(path: str) -> None:
    import latentsync.streaming

    ReplayedFaceTracker.tracks_path = path
    latentsync.streaming.FaceTracker = ReplayedFaceTracker  # the first pass of the pipeline looks it up there


def load_pipeline(args: argparse.Namespace):
    import torch

    from latentsync import LatentSyncPipeline
    from latentsync.testing import build_tiny_pipeline

    from latentsync.utils import DTYPES

    dtype = DTYPES[args.dtype]
    if args.model:
        pipe = LatentSyncPipeline.from_pretrained(args.model, dtype=dtype)
    else:  # random weights
        if args.full_size:
            from model_speed import full_size_pipeline  # benchmarks/ is on sys.path when run as a script

            pipe = full_size_pipeline(args.resolution, args.device)
        else:
            pipe = build_tiny_pipeline(resolution=args.resolution)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipeline(pipe, spec: dict, video, audio, output_path, return_frames=False):
    import torch

    pipe.set_scheduler(spec["scheduler"])
    if spec.get("fused") or spec.get("compiled"):
        pipe.unet.set_fused_norm(True)
        pipe.enable_channels_last()
    if spec.get("compiled") and getattr(pipe, "_compiled_step", None) is None:
        pipe.compile_denoiser()
    pipe.enable_warps_on_device(spec.get("warps", False))
    pipe.enable_hardware_decode("cuda" if spec.get("nvdec") else None)
    pipe.enable_hardware_encode("h264_nvenc" if spec.get("nvenc") else None)
    return pipe(video=video, audio=audio, output_path=output_path, num_inference_steps=spec["steps"],
                generator=torch.Generator().manual_seed(0), overlap_stages=spec["overlap"],
                deep_cache_interval=spec["deep_cache"], return_frames=return_frames,
                windows_per_batch=spec.get("windows", 1))


def run_once(args: argparse.Namespace) -> dict:
    import torch

    if args.face_tracks:
        use_saved_face_tracks(args.face_tracks)
    pipe = load_pipeline(args)
    spec = parse_variant(args.variant, args.steps)
    compile_s = 0.0
    if args.device.startswith("cuda") or spec["compiled"]:  # kernels, cuDNN plans, compiled graphs and allocator
        warm = run_pipeline(pipe, {**spec, "steps": 1}, args.video, args.audio, None)  # pools come up untimed
        compile_s = warm.timings.get("compile", 0.0)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        out = run_pipeline(pipe, spec, args.video, args.audio, os.path.join(tmp, "out.mp4"))
    return {
        "frames": out.num_frames,
        "timings": {**out.timings, "compile (warm-up)": compile_s},
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
    }


def child(args: argparse.Namespace, variant: str, video=None, audio=None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--video", str(video or args.video), "--audio", str(audio or args.audio),
           "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype,
           "--resolution", str(args.resolution), "--variant", variant]
    if args.model:
        cmd += ["--model", args.model]
    if args.full_size:
        cmd += ["--full-size"]
    if args.face_tracks:
        cmd += ["--face-tracks", args.face_tracks]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    for line in proc.stderr.splitlines():  # a GPU decoder or encoder that fell back: that row measures the CPU's
        if "hardware video" in line:
            print(f"{variant}: {line.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ffmpeg(*a: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *a], check=True)


def fmt_fps(frames: int, seconds: float) -> str:
    return f"{frames / seconds:.1f}" if seconds else "-"


def stage_table(runs: dict[str, dict]) -> None:
    names = list(runs)
    n = runs[names[0]]["frames"]
    print(f"{n} frames; busy seconds per stage and frames/s (stages overlap in time in the overlapped runs)")
    print(f"{'stage':<15}" + "".join(f"{name[:22]:>24}" for name in names))
    for stage in STAGES + ["total"]:
        cells = []
        for name in names:
            s = runs[name]["timings"].get(stage, 0.0)
            cells.append(f"{s:>9.2f} s {fmt_fps(n, s):>8} fps" if s else f"{'-':>24}")
        print(f"{stage:<15}" + "".join(f"{c:>24}" for c in cells))
    print(f"{'compile':<15}" + "".join(f"{runs[name]['timings'].get('compile (warm-up)', 0.0):>22.1f} s"
                                     for name in names))
    for name in names:
        t = runs[name]["timings"]
        if t.get("denoise"):
            end_to_end, denoiser = n / t["total"], n / t["denoise"]
            print(f"{name}: end to end {end_to_end:.2f} fps = {100 * end_to_end / denoiser:.0f} % of the "
                  f"denoiser-only {denoiser:.2f} fps")
    base = runs[names[0]]["timings"]["total"]
    print("end-to-end speed-up vs " + names[0] + ": "
          + ", ".join(f"{name} {base / r['timings']['total']:.2f}x" for name, r in runs.items()))
    print("peak RSS GiB: " + ", ".join(f"{name} {r['peak_rss_gib']:.2f}" for name, r in runs.items()))
    if runs[names[0]]["peak_gpu_gib"] is not None:
        print("peak GPU GiB: " + ", ".join(f"{name} {r['peak_gpu_gib']:.2f}" for name, r in runs.items()))


def trimmed_inputs(args: argparse.Namespace, tmp: str, seconds: float, loop: bool = False) -> tuple[Path, Path]:
    video, audio = Path(tmp) / f"v{seconds}.mp4", Path(tmp) / f"a{seconds}.wav"
    pre = ["-stream_loop", "-1"] if loop else []
    ffmpeg(*pre, "-i", str(args.video), "-t", str(seconds), "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf",
           "20", str(video))
    ffmpeg(*pre, "-i", str(args.audio), "-t", str(seconds), "-ac", "1", "-ar", "16000", str(audio))
    return video, audio


def lengths_table(args: argparse.Namespace, variant: str) -> None:
    print(f"variant {variant}")
    print(f"{'seconds':>8}{'frames':>8}{'total s':>9}{'fps':>7}{'peak RSS GiB':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.lengths:
            video, audio = trimmed_inputs(args, tmp, seconds, loop=True)
            r = child(args, variant, video=video, audio=audio)
            total = r["timings"]["total"]
            print(f"{seconds:>8}{r['frames']:>8}{total:>9.1f}{r['frames'] / total:>7.1f}{r['peak_rss_gib']:>14.2f}",
                  flush=True)
            video.unlink()
            audio.unlink()


class RegeneratedRegion:
    """The pixels a reference run regenerated (where it differs from the source), frame by frame, as small crops."""

    def __init__(self, ref, source):
        import numpy as np

        self.crops = []
        for r, s in zip(ref, source):
            changed = np.any(r != s, axis=-1)
            if not changed.any():
                self.crops.append(None)
                continue
            ys, xs = np.nonzero(changed)
            box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
            self.crops.append((box, changed[box], r[box].astype(np.float64)))

    def psnr(self, frames) -> float:
        """PSNR of ``frames`` against the reference over the regenerated pixels."""
        import numpy as np

        sq, count = 0.0, 0
        for f, crop in zip(frames, self.crops):
            if crop is not None:
                box, mask, ref = crop
                sq += float(((f[box].astype(np.float64) - ref)[mask] ** 2).sum())
                count += int(mask.sum()) * 3
        if not count:
            return float("nan")
        return float("inf") if sq == 0 else 10 * np.log10(255.0**2 * count / sq)


def quality_table(args: argparse.Namespace, video, audio) -> None:
    from latentsync.media import iter_frames

    sync_model = None
    if args.syncnet:
        try:
            from latentsync.eval import estimate_sync, load_sync_model
        except ImportError as exc:  # the evaluation package is optional
            raise SystemExit(f"--syncnet needs latentsync.eval ({exc})") from exc
        sync_model = load_sync_model(args.syncnet, weights_name=args.syncnet_file, device=args.device)
    pipe = load_pipeline(args)
    variants = args.variants or QUALITY_VARIANTS
    ref_name = variants[0]
    print(f"reference: {ref_name}; PSNR over the pixels the reference regenerated (same seed); "
          f"denoise = U-Net seconds, speed-up vs the reference")
    head = f"{'variant':<22}{'steps':>6}{'denoise s':>11}{'speed-up':>10}{'total s':>9}{'PSNR dB':>9}"
    print(head + (f"{'offset':>8}{'sync conf':>11}" if sync_model is not None else ""))
    region = ref_denoise = None
    pipe_runs = [(name, parse_variant(name, args.steps)) for name in variants]
    run_pipeline(pipe, {**pipe_runs[0][1], "steps": 1}, video, audio, None)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in pipe_runs:
            spec["overlap"] = True
            path = os.path.join(tmp, "out.mp4") if sync_model is not None else None
            out = run_pipeline(pipe, spec, video, audio, path, return_frames=True)
            if region is None:
                region, ref_denoise = RegeneratedRegion(out.frames, iter_frames(video, 25)), out.timings["denoise"]
            psnr = region.psnr(out.frames)
            line = (f"{name:<22}{spec['steps']:>6}{out.timings['denoise']:>11.2f}"
                    f"{ref_denoise / out.timings['denoise']:>9.2f}x{out.timings['total']:>9.1f}{psnr:>9.2f}")
            if sync_model is not None:
                est = estimate_sync(path, sync_model)
                line += f"{est.offset:>8d}{est.confidence:>11.2f}"
            print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=str(SHARED / "demo1_video.mp4"))
    p.add_argument("--audio", default=str(SHARED / "demo1_audio.wav"))
    p.add_argument("--seconds", type=float, default=None, help="use only the first seconds of the clip")
    p.add_argument("--model", default=None, help="pipeline id or folder (default: tiny random model)")
    p.add_argument("--full-size", action="store_true",
                   help="full-size LatentSync architecture with random weights (same cost as the released model)")
    p.add_argument("--resolution", type=int, default=256, help="face resolution of the random model")
    p.add_argument("--steps", type=int, default=20, help="steps of variants that do not name theirs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--variants", nargs="+", default=None,
                   help=f"variants to compare, the first is the baseline (default {' '.join(DEFAULT_VARIANTS)}; "
                        f"with --quality {' '.join(QUALITY_VARIANTS)})")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the variants this many times, interleaved, and keep each one's fastest run (noisy hosts)")
    p.add_argument("--lengths", type=int, nargs="*", help="measure peak memory for these video lengths (seconds)")
    p.add_argument("--quality", action="store_true", help="speed vs fidelity (and sync with --syncnet) per variant")
    p.add_argument("--syncnet", default=None, help="SyncNet for the sync metric (file, folder or Hub id)")
    p.add_argument("--syncnet-file", default=None, help="file inside the --syncnet repo (e.g. auxiliary/syncnet_v2.model)")
    p.add_argument("--save-face-tracks", "--save-face-anchors", dest="save_face_tracks", default=None,
                   help="write the (trimmed) clip's face tracks (.npz) and exit")
    p.add_argument("--face-tracks", "--face-anchors", dest="face_tracks", default=None,
                   help="replay face tracks saved by --save-face-tracks instead of running MediaPipe")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--overlap", action="store_true", help=argparse.SUPPRESS)  # older child command lines
    args = p.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        args.variant = args.variant or ("overlap" if args.overlap else "naive")
        print(json.dumps(run_once(args)))
        return
    for path in (args.video, args.audio):
        if not Path(path).is_file():
            raise SystemExit(f"input not found: {path}")
    model = args.model or ("full-size (random)" if args.full_size else "tiny (random)")
    print(f"video {args.video}, audio {args.audio}, model {model}, {args.device} {args.dtype}, "
          f"torch threads: {__import__('torch').get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.seconds:
            args.video, args.audio = trimmed_inputs(args, tmp, args.seconds)
            print(f"first {args.seconds:g} s of the clip")
        if args.save_face_tracks:
            save_face_tracks(args.video, args.save_face_tracks)
            return
        if args.face_tracks:
            args.face_tracks = str(Path(args.face_tracks).resolve())
            use_saved_face_tracks(args.face_tracks)
        if args.lengths:
            for variant in args.variants or ["overlap"]:
                lengths_table(args, variant)
            return
        if args.quality:
            quality_table(args, args.video, args.audio)
            return
        runs: dict[str, dict] = {}
        for _ in range(args.repeats):
            for v in args.variants or DEFAULT_VARIANTS:
                r = child(args, v)
                # each variant's total at once: a run stopped by a time limit still leaves the finished ones
                t = r["timings"]
                print(f"{v}: {r['frames']} frames in {t['total']:.2f} s = {r['frames'] / t['total']:.2f} fps, denoise "
                      f"{t.get('denoise', float('nan')):.2f} s, compile {t.get('compile (warm-up)', 0.0):.1f} s",
                      flush=True)
                if v not in runs or r["timings"]["total"] < runs[v]["timings"]["total"]:
                    runs[v] = r
        stage_table(runs)


if __name__ == "__main__":
    main()
