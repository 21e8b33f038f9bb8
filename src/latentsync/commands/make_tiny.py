"""``latentsync make-tiny DIR``: save a tiny random-weight pipeline (for offline tests), or with ``--training`` the
tiny stand-ins of every model training loads (for the offline training walkthrough)."""

from __future__ import annotations

import argparse
import logging

from ..testing import build_tiny_pipeline, save_tiny_training_models

logger = logging.getLogger("latentsync")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync make-tiny",
                                description="Save a tiny random-weight pipeline (noise-quality output) for offline tests.")
    p.add_argument("directory")
    p.add_argument("--resolution", type=int, default=None,
                   help="face resolution (default: 256 for the pipeline, 64 with --training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--training", action="store_true",
                   help="write DIR/pipeline, DIR/syncnet, DIR/vgg and DIR/videomae: tiny stand-ins of every model "
                        "U-Net training loads (the tiny training configs read them from tiny-models/)")
    return p


def make_tiny(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.training:
        paths = save_tiny_training_models(args.directory, resolution=args.resolution or 64, seed=args.seed)
        logger.info("saved tiny random-weight training stand-ins (noise quality, for offline runs): %s",
                    ", ".join(f"{k}={v}" for k, v in paths.items() if k != "lpips_heads"))
        return 0
    build_tiny_pipeline(resolution=args.resolution or 256, seed=args.seed).save_pretrained(args.directory)
    logger.info("saved a tiny random-weight pipeline to %s (noise-quality output, for tests)", args.directory)
    return 0
