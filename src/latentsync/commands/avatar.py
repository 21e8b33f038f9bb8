"""``latentsync avatar VIDEO DIR``: prepare a talking-face video once for fast and live lip sync."""

from __future__ import annotations

import argparse
import logging

from ..avatar import avatar_writer, check_avatar_destination
from ..face.choice import check_face_arguments
from ..media.probe import probe_video
from .run import add_model_arguments, check_model_options, face_choice, frame_rate, load_pipeline

logger = logging.getLogger("latentsync")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync avatar",
                                description="Analyse a talking-face video once (faces, alignment, VAE latents) and "
                                            "save it as an avatar folder for `latentsync --avatar DIR` and live "
                                            "streams.")
    p.add_argument("video", help="talking-face video")
    p.add_argument("directory", help="avatar folder to write (new or empty, or an earlier avatar with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the avatar already in DIR")
    p.add_argument("--fps", type=frame_rate, default=25, metavar="25|input|N",
                   help="timeline of the avatar: 25 (default), input (the video's own timestamps) or any rate")
    p.add_argument("--face", type=face_choice, default=None, metavar="largest|speaking|INDEX|x,y,w,h",
                   help="face to lip-sync (as for the lip-sync command)")
    p.add_argument("--face-frame", type=int, default=0, help="frame of the --face x,y,w,h box")
    p.add_argument("--syncnet", default=None,
                   help="StableSyncNet to find the speaking face with (default: lip motion against loudness)")
    add_model_arguments(p)
    return p


def avatar(argv: list[str]) -> int:
    """Prepare the avatar of ``VIDEO`` in ``DIR``."""
    args = parser().parse_args(argv)
    # the video, the face choice and the folder before the model loads (seconds); the pipeline checks them again
    probe_video(args.video)
    face = args.face or {}
    check_face_arguments(face.get("face"), face.get("face_index"), face.get("face_box"), args.face_frame)
    check_avatar_destination(args.directory, args.overwrite)
    # the folder is held from here to the end, so that a second run into it fails now, not after its analysis
    with avatar_writer(args.directory):
        return _prepare(args, face)


def _prepare(args: argparse.Namespace, face: dict) -> int:
    """Load the pipeline and prepare the avatar (the folder checked and held by [`avatar`])."""
    # the pipeline as ``latentsync`` loads it, with the SyncNet that finds the speaking face (--syncnet); no LoRA or
    # sampler options (they do not change what an avatar holds: faces, alignment and the VAE encoder's latents)
    args.lora, args.cpu_offload, args.scheduler, args.vae_slicing, args.xformers = [], None, "ddim", False, False
    args.compile = False
    source = check_model_options(args)
    pipe = load_pipeline(args, source.local_files_only)
    prepared = pipe.prepare_avatar(args.video, args.directory, output_fps=args.fps, face_box_frame=args.face_frame,
                                   overwrite=args.overwrite, **face)
    logger.info("avatar %s: %d frames, %d with a face", args.directory, prepared.num_frames, len(prepared.crops))
    return 0
