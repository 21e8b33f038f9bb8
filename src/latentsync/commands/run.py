"""``latentsync --video in.mp4 --audio speech.wav --output out.mp4``: lip-sync a video."""

from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Any

import torch

from ..pipeline import LatentSyncPipeline
from ..schedulers import SCHEDULERS
from ..utils import DTYPES, default_device, resolve_dtype

logger = logging.getLogger("latentsync")

DEFAULT_MODEL = "ByteDance/LatentSync-1.6"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync", description="Lip-sync a talking-face video to a speech track.")
    p.add_argument("--video", required=True, help="input talking-face video")
    p.add_argument("--audio", required=True, help="speech audio (any audio or video file)")
    p.add_argument("--output", required=True, help="output video (.mp4, .mov or .mkv); its folder is created if missing")
    add_generation_arguments(p)
    return p


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """The model, device and generation options shared by ``latentsync`` and ``latentsync batch``."""
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or local folder of a LatentSync pipeline")
    p.add_argument("--lora", action="append", default=[], metavar="DIR_OR_ID[:WEIGHT]",
                   help="LoRA adapter of the U-Net to apply (folder or Hub id, optional strength; repeatable)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=1.5, help="audio guidance (1 disables; default 1.5)")
    p.add_argument("--seed", type=int, default=1247, help="random seed (default 1247)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on GPU, fp32 on CPU")
    p.add_argument("--face-index", type=int, default=None, help="face to lip-sync, k-th from the left (default: largest)")
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
    fast.add_argument("--xformers", action="store_true", help="xFormers attention (CUDA, pip install latentsync[xformers])")


def load_pipeline(args: argparse.Namespace) -> LatentSyncPipeline:
    """The pipeline of ``--model`` on ``--device`` with the LoRA adapters and speed options asked for."""
    device = args.device or default_device()
    dtype = resolve_dtype(args.dtype, device)
    logger.info("loading %s on %s (%s)", args.model, device, dtype)
    pipe = LatentSyncPipeline.from_pretrained(args.model, dtype=dtype)
    names, weights = [], []
    for i, spec in enumerate(args.lora):
        source, _, weight = spec.rpartition(":") if re.search(r":[\d.]+$", spec) else (spec, "", "1")
        pipe.load_lora_weights(source, adapter_name=f"lora_{i}")
        names.append(f"lora_{i}")
        weights.append(float(weight))
    if names:
        pipe.set_adapters(names, adapter_weights=weights)
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
    if args.xformers:
        pipe.enable_xformers_memory_efficient_attention()
    if args.compile:
        pipe.unet.compile()
    return pipe


def generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline call's generation options from the parsed arguments (a fresh seeded generator each time)."""
    return {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "generator": torch.Generator("cpu").manual_seed(args.seed),
        "face_index": args.face_index,
        "audio_window_mode": args.audio_windows,
        "deep_cache_interval": args.deep_cache,
    }


def run(argv: list[str]) -> int:
    """Load the pipeline with the options asked for and lip-sync one video."""
    args = parser().parse_args(argv)
    pipe = load_pipeline(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)  # e.g. outputs/ on a fresh clone
    out = pipe(video=args.video, audio=args.audio, output_path=args.output, **generation_kwargs(args))
    logger.info("wrote %s (%d frames at %g fps, %d without a face)", out.path, out.num_frames, out.fps,
                out.frames_without_face)
    return 0
