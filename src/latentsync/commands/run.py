"""``latentsync --video in.mp4 --audio speech.wav --output out.mp4``: lip-sync a video."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import torch

from ..errors import LatentSyncInputError
from ..face.selection import FACE_RULES
from ..pipeline import LatentSyncPipeline
from ..schedulers import SCHEDULERS
from ..utils import DTYPES, default_device, resolve_dtype

logger = logging.getLogger("latentsync")

DEFAULT_MODEL = "ByteDance/LatentSync-1.6"


def face_choice(text: str) -> dict[str, Any]:
    """``--face``: ``largest``, ``speaking``, a track number, or a box ``x,y,w,h`` -> the pipeline's arguments."""
    text = text.strip()
    if text in FACE_RULES:
        return {"face": text}
    if text.isdigit():
        return {"face_index": int(text)}
    parts = text.split(",")
    try:
        box = [float(v) for v in parts]
    except ValueError:
        box = []
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise argparse.ArgumentTypeError(f"expected largest, speaking, a face number or x,y,w,h; got {text!r}")
    return {"face_box": tuple(box)}


def voice(text: str) -> tuple[int, str]:
    """``--audio-for``: ``INDEX=FILE`` -> (track number, speech file)."""
    index, sep, path = text.partition("=")
    if not sep or not index.strip().isdigit() or not path:
        raise argparse.ArgumentTypeError(f"expected FACE=FILE (a face number from `latentsync faces`), got {text!r}")
    return int(index), path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync", description="Lip-sync a talking-face video to a speech track.")
    p.add_argument("--video", required=True, help="input talking-face video")
    p.add_argument("--audio", default=None, help="speech audio (any audio or video file)")
    p.add_argument("--output", required=True, help="output video (.mp4, .mov or .mkv); its folder is created if missing")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or local folder of a LatentSync pipeline")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=1.5, help="audio guidance (1 disables; default 1.5)")
    p.add_argument("--seed", type=int, default=1247, help="random seed (default 1247)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on GPU, fp32 on CPU")
    faces = p.add_argument_group("faces and voices (see `latentsync faces VIDEO` for the face numbers)")
    faces.add_argument("--face", type=face_choice, default=None, metavar="largest|speaking|INDEX|x,y,w,h",
                       help="face to lip-sync: the largest of each shot (default), the one speaking in the video's "
                            "own soundtrack in each shot, face track INDEX, or the face in box x,y,w,h (pixels) on "
                            "frame --face-frame")
    faces.add_argument("--face-frame", type=int, default=0, help="frame (25 fps) of the --face x,y,w,h box")
    faces.add_argument("--face-index", type=int, default=None, help=argparse.SUPPRESS)  # older name of --face INDEX
    faces.add_argument("--audio-for", type=voice, action="append", default=None, metavar="INDEX=FILE",
                       help="a voice per face: lip-sync face INDEX to FILE (repeat for each face; replaces --audio)")
    faces.add_argument("--mix-audio", default=None,
                       help="sound of the output (default: --audio, or the mix of the --audio-for files)")
    faces.add_argument("--syncnet", default=None,
                       help="StableSyncNet (folder, Hub id or stable_syncnet.pt) to find the speaking face with "
                            "(default: lip motion against loudness)")
    p.add_argument("--audio-windows", choices=["official", "overlap"], default="official",
                   help="Whisper windows: independent 30 s (official) or overlapping (no glitch every 30 s)")
    fast = p.add_argument_group("speed and memory")
    fast.add_argument("--scheduler", choices=list(SCHEDULERS), default="ddim",
                      help="sampler (default ddim, as the official code; dpm++ = DPM-Solver++ multistep)")
    fast.add_argument("--deep-cache", type=int, default=0, metavar="N",
                      help="DeepCache: full U-Net pass every N steps, shallow branch in between (0 = off; try 3)")
    fast.add_argument("--compile", action="store_true",
                      help="torch.compile the U-Net step with fixed shapes (compiles once, on the first window)")
    fast.add_argument("--cuda-graphs", action="store_true", help="with --compile: replay the steps as CUDA graphs")
    fast.add_argument("--windows-per-batch", type=int, default=None, metavar="N",
                      help="16-frame windows per U-Net call (default: as many as fit in GPU memory; 1 on a CPU)")
    fast.add_argument("--fused-norm", action="store_true", help="launch-light frame-pooled GroupNorm")
    fast.add_argument("--channels-last", action="store_true", help="channels-last U-Net weights (GPU)")
    fast.add_argument("--gpu-warps", action="store_true", help="face alignment and paste-back as torch warps on "
                      "the device")
    fast.add_argument("--fp8", action="store_true", help="float8 linear layers (torchao; Hopper/Ada GPUs)")
    fast.add_argument("--cpu-offload", choices=["model", "sequential"], default=None,
                      help="keep weights on the CPU and move them to the GPU when used (lower GPU memory)")
    fast.add_argument("--vae-slicing", action="store_true", help="VAE-encode/decode one frame at a time")
    return p


def run(argv: list[str]) -> int:
    """Load the pipeline with the speed options asked for and lip-sync one video."""
    p = parser()
    args = p.parse_args(argv)
    if (args.audio is None) == (args.audio_for is None):
        p.error("give the speech with --audio, or one --audio-for INDEX=FILE per face")
    choice = dict(args.face or {})
    if args.face_index is not None:
        choice.setdefault("face_index", args.face_index)
    audio = dict(args.audio_for) if args.audio_for else args.audio
    if args.audio_for and len(audio) != len(args.audio_for):
        raise LatentSyncInputError("--audio-for names the same face twice")
    device = args.device or default_device()
    dtype = resolve_dtype(args.dtype, device)
    logger.info("loading %s on %s (%s)", args.model, device, dtype)
    pipe = LatentSyncPipeline.from_pretrained(args.model, dtype=dtype)
    if args.cpu_offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif args.cpu_offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if args.scheduler != "ddim":
        pipe.set_scheduler(args.scheduler)
    if args.vae_slicing:
        pipe.enable_vae_slicing()
    if args.fused_norm:
        pipe.unet.set_fused_norm(True)
    if args.channels_last:
        pipe.enable_channels_last()
    if args.fp8:
        pipe.enable_fp8()
    if args.compile or args.cuda_graphs:
        pipe.compile_denoiser(cuda_graphs=args.cuda_graphs)
    if args.gpu_warps:
        pipe.enable_warps_on_device()
    if args.syncnet:
        pipe.load_syncnet(args.syncnet)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)  # e.g. outputs/ on a fresh clone
    out = pipe(
        video=args.video,
        audio=audio,
        output_path=args.output,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        generator=generator,
        face_box_frame=args.face_frame,
        mix_audio=args.mix_audio,
        audio_window_mode=args.audio_windows,
        deep_cache_interval=args.deep_cache,
        windows_per_batch=args.windows_per_batch,
        **choice,
    )
    logger.info("wrote %s (%d frames at %g fps, %d without a face)", out.path, out.num_frames, out.fps,
                out.frames_without_face)
    for shot in out.faces or []:
        scores = ", ".join(f"face {k}: {'-' if v is None else f'{v:.3f}'}" for k, v in shot.scores.items())
        logger.info("shot %d (frames %d-%d): %s (%s)%s", shot.shot, shot.start, shot.end - 1,
                    ", ".join(f"face {k}" for k in shot.tracks) or "no face", shot.rule,
                    f"; scores {scores}" if scores else "")
    return 0
