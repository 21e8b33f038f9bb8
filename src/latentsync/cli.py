"""Command line: ``latentsync --video in.mp4 --audio speech.wav --output out.mp4`` and ``latentsync make-tiny DIR``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from .errors import LatentSyncInputError

logger = logging.getLogger("latentsync")

DEFAULT_MODEL = "ByteDance/LatentSync-1.6"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync", description="Lip-sync a talking-face video to a speech track.")
    p.add_argument("--video", required=True, help="input talking-face video")
    p.add_argument("--audio", required=True, help="speech audio (any audio or video file)")
    p.add_argument("--output", required=True, help="output video (.mp4, .mov or .mkv); its folder is created if missing")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or local folder of a LatentSync pipeline")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=1.5, help="audio guidance (1 disables; default 1.5)")
    p.add_argument("--seed", type=int, default=1247, help="random seed (default 1247)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on GPU, fp32 on CPU")
    p.add_argument("--face-index", type=int, default=None, help="face to lip-sync, k-th from the left (default: largest)")
    p.add_argument("--audio-windows", choices=["official", "overlap"], default="official",
                   help="Whisper windows: independent 30 s (official) or overlapping (no glitch every 30 s)")
    fast = p.add_argument_group("speed and memory")
    fast.add_argument("--scheduler", choices=["ddim", "dpm++", "unipc", "euler"], default="ddim",
                      help="sampler (default ddim, as the official code; dpm++ = DPM-Solver++ multistep)")
    fast.add_argument("--deep-cache", type=int, default=0, metavar="N",
                      help="DeepCache: full U-Net pass every N steps, shallow branch in between (0 = off; try 3)")
    fast.add_argument("--compile", action="store_true", help="torch.compile the U-Net (slow first window)")
    fast.add_argument("--cpu-offload", choices=["model", "sequential"], default=None,
                      help="keep weights on the CPU and move them to the GPU when used (lower GPU memory)")
    fast.add_argument("--vae-slicing", action="store_true", help="VAE-encode/decode one frame at a time")
    return p


def _make_tiny_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync make-tiny",
                                description="Save a tiny random-weight pipeline (noise-quality output) for offline tests.")
    p.add_argument("directory")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    return p


def run(argv: list[str]) -> int:
    args = _run_parser().parse_args(argv)
    from .pipeline import LatentSyncPipeline

    device = args.device or default_device()
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float32 if device == "cpu" else torch.float16)
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
    generator = torch.Generator("cpu").manual_seed(args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)  # e.g. outputs/ on a fresh clone
    out = pipe(
        video=args.video,
        audio=args.audio,
        output_path=args.output,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        generator=generator,
        face_index=args.face_index,
        audio_window_mode=args.audio_windows,
        deep_cache_interval=args.deep_cache,
    )
    logger.info("wrote %s (%d frames at %g fps, %d without a face)", out.path, out.num_frames, out.fps,
                out.frames_without_face)
    return 0


def make_tiny(argv: list[str]) -> int:
    args = _make_tiny_parser().parse_args(argv)
    from .tiny import build_tiny_pipeline

    build_tiny_pipeline(resolution=args.resolution, seed=args.seed).save_pretrained(args.directory)
    logger.info("saved a tiny random-weight pipeline to %s (noise-quality output, for tests)", args.directory)
    return 0


def prepare_command(argv: list[str]) -> int:
    """``latentsync prepare INPUT OUTPUT``: raw videos -> aligned, synced, filtered clips as a datasets dataset."""
    from .data.prepare import main as prepare_main

    return prepare_main(argv)


def _convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentsync convert",
        description="Convert an official LatentSync release (latentsync_unet.pt, whisper/tiny.pt) to a "
                    "diffusers-format pipeline folder (safetensors + model_index.json).",
    )
    p.add_argument("--official", required=True, help="Hub id (e.g. ByteDance/LatentSync-1.6) or folder of the release")
    p.add_argument("--output", required=True, help="folder to write the converted pipeline to")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also upload the folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--resolution", type=int, default=None, help="face resolution (default: 512 for 1.6, else 256)")
    p.add_argument("--vae", default=None, help="Hub id or folder of the VAE (default stabilityai/sd-vae-ft-mse)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the saved weights (default fp32)")
    p.add_argument("--syncnet", action="store_true",
                   help="also convert stable_syncnet.pt into OUTPUT/syncnet (for training)")
    return p


def convert(argv: list[str]) -> int:
    args = _convert_parser().parse_args(argv)
    from .conversion import OFFICIAL_VAE_ID, load_official_pipeline, load_official_syncnet, resolve_official_files

    dtype = DTYPES[args.dtype]
    pipe = load_official_pipeline(args.official, resolution=args.resolution, vae_id=args.vae or OFFICIAL_VAE_ID,
                                  torch_dtype=dtype)
    pipe.save_pretrained(args.output, safe_serialization=True)
    if args.syncnet:
        files = resolve_official_files(args.official, include_syncnet=True)
        load_official_syncnet(files.syncnet, torch_dtype=dtype).save_pretrained(
            os.path.join(args.output, "syncnet"), safe_serialization=True
        )
    logger.info("saved the converted pipeline (resolution %d) to %s", pipe.config.resolution, args.output)
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.push_to_hub, private=args.private, exist_ok=True)
        api.upload_folder(repo_id=args.push_to_hub, folder_path=args.output,
                          commit_message=f"Convert {args.official} to the diffusers format (latentsync convert)")
        logger.info("uploaded %s to https://huggingface.co/%s", args.output, args.push_to_hub)
    return 0


def eval_command(argv: list[str]) -> int:
    """``latentsync eval <subcommand>``: SyncNet accuracy, sync confidence, ... (see latentsync.eval.cli)."""
    from .eval.cli import main as eval_main

    return eval_main(argv)


COMMANDS = {"make-tiny": make_tiny, "convert": convert, "eval": eval_command}
COMMANDS["prepare"] = prepare_command


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = COMMANDS.get(argv[0], run) if argv else run
    if command is not run:
        argv = argv[1:]
    try:
        return command(argv)
    except LatentSyncInputError as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
