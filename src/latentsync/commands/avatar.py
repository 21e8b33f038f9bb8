"""``latentsync avatar VIDEO DIR``: prepare a talking-face video once for fast and live lip sync."""

from __future__ import annotations

import argparse
import logging

import torch

from ..pipeline import LatentSyncPipeline
from ..utils import DTYPES, default_device, resolve_dtype
from .run import DEFAULT_MODEL, face_choice, frame_rate

logger = logging.getLogger("latentsync")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync avatar",
                                description="Analyse a talking-face video once (faces, alignment, VAE latents) and "
                                            "save it as an avatar folder for `latentsync --avatar DIR` and live "
                                            "streams.")
    p.add_argument("video", help="talking-face video")
    p.add_argument("directory", help="avatar folder to write")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or local folder of a LatentSync pipeline")
    p.add_argument("--fps", type=frame_rate, default=25, metavar="25|input|N",
                   help="timeline of the avatar: 25 (default), input (the video's own timestamps) or any rate")
    p.add_argument("--face", type=face_choice, default=None, metavar="largest|speaking|INDEX|x,y,w,h",
                   help="face to lip-sync (as for the lip-sync command)")
    p.add_argument("--face-frame", type=int, default=0, help="frame of the --face x,y,w,h box")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on GPU, fp32 on CPU")
    return p


def avatar(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    device = args.device or default_device()
    pipe = LatentSyncPipeline.from_pretrained(args.model, dtype=resolve_dtype(args.dtype, device)).to(device)
    with torch.no_grad():
        prepared = pipe.prepare_avatar(args.video, args.directory, output_fps=args.fps,
                                       face_box_frame=args.face_frame, **(args.face or {}))
    logger.info("avatar %s: %d frames, %d with a face", args.directory, prepared.num_frames, len(prepared.crops))
    return 0
