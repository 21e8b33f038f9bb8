"""``latentsync --video in.mp4 --audio speech.wav --output out.mp4``: lip-sync a video (or a prepared avatar), or,
with ``--audio -``, lip-sync speech read from a pipe live, writing fragmented MP4 or raw frames as they come."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..errors import LatentSyncInputError
from ..face.selection import FACE_RULES
from ..live import stream_frames
from ..media.pipes import LIVE_FORMATS, LiveVideoSink, read_audio_chunks
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


def frame_rate(text: str) -> float | str:
    """``--fps``: ``input`` (the video's own timeline) or a frame rate."""
    if text.strip() == "input":
        return "input"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected input or a frame rate, got {text!r}") from None
    return int(value) if value.is_integer() else value


def voice(text: str) -> tuple[int, str]:
    """``--audio-for``: ``INDEX=FILE`` -> (track number, speech file)."""
    index, sep, path = text.partition("=")
    if not sep or not index.strip().isdigit() or not path:
        raise argparse.ArgumentTypeError(f"expected FACE=FILE (a face number from `latentsync faces`), got {text!r}")
    return int(index), path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync", description="Lip-sync a talking-face video to a speech track.")
    p.add_argument("--video", default=None, help="input talking-face video")
    p.add_argument("--avatar", default=None,
                   help="a prepared avatar folder (`latentsync avatar VIDEO DIR`) instead of --video")
    p.add_argument("--audio", default=None,
                   help="speech audio (any audio or video file); - reads it from standard input, live")
    p.add_argument("--output", required=True,
                   help="output video (.mp4, .mov or .mkv; its folder is created if missing); with --audio -, a "
                        "file or - for standard output")
    p.add_argument("--fps", type=frame_rate, default=25, metavar="25|input|N",
                   help="output frame rate: 25 (default, the model's), input (every frame of the video at its own "
                        "timestamp) or any rate")
    live = p.add_argument_group("live (--audio -)")
    live.add_argument("--live-format", choices=LIVE_FORMATS, default="mp4",
                      help="fragmented MP4 with the sound (default) or raw RGB24 frames")
    live.add_argument("--chunk-seconds", type=float, default=0.2, help="audio read per step (default 0.2 s)")
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
    fast.add_argument("--compile", action="store_true", help="torch.compile the U-Net (slow first window)")
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
    if (args.video is None) == (args.avatar is None):
        p.error("give the face with --video or --avatar (one of them)")
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
    if args.compile:
        pipe.unet.compile()
    if args.syncnet:
        pipe.load_syncnet(args.syncnet)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    if args.output != "-":
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)  # e.g. outputs/ on a fresh clone
    if args.audio == "-":
        return run_live(pipe, args, choice, generator)
    out = pipe(
        video=args.video,
        avatar=args.avatar,
        output_fps=args.fps,
        audio=audio,
        output_path=args.output,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        generator=generator,
        face_box_frame=args.face_frame,
        mix_audio=args.mix_audio,
        audio_window_mode=args.audio_windows,
        deep_cache_interval=args.deep_cache,
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


def run_live(pipe: LatentSyncPipeline, args: argparse.Namespace, choice: dict[str, Any],
             generator: torch.Generator) -> int:
    """``--audio -``: lip-sync speech read from standard input as it arrives, writing each window of frames as soon
    as it is made (a --video is first prepared as an avatar, in a temporary folder)."""
    if args.audio_for:
        raise LatentSyncInputError("--audio - takes one voice: --audio-for does not apply")
    with tempfile.TemporaryDirectory(prefix="latentsync-avatar-") as tmp:
        avatar = args.avatar
        if avatar is None:
            avatar = pipe.prepare_avatar(args.video, tmp, output_fps=args.fps, face_box_frame=args.face_frame,
                                         **choice)
        session = pipe.live_session(avatar, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                                    generator=generator)
        fps = session.fps if session.avatar.timestamps is None else _typical_rate(session.avatar.timestamps)
        sink = LiveVideoSink(args.output, fps, args.live_format)

        def speech() -> Iterator:
            for chunk in read_audio_chunks(sys.stdin.buffer, args.chunk_seconds):
                sink.write_audio(chunk)
                yield chunk

        for frame in stream_frames(session, speech()):
            sink.write(frame.image)
        sink.close()
    logger.info("live: %d frames at %g fps to %s", sink.frames_written, fps,
                "standard output" if args.output == "-" else args.output)
    return 0


def _typical_rate(timestamps: Any) -> float:
    """The frame rate a stream of frames at ``timestamps`` is written at (pipes carry no timestamps)."""
    gaps = np.diff(timestamps)
    return 1.0 / float(np.median(gaps)) if len(gaps) else 25.0
