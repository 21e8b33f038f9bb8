"""``latentsync make-tiny DIR``: save a tiny random-weight pipeline (for offline tests)."""

from __future__ import annotations

import argparse
import logging

from ..testing import build_tiny_pipeline

logger = logging.getLogger("latentsync")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync make-tiny",
                                description="Save a tiny random-weight pipeline (noise-quality output) for offline tests.")
    p.add_argument("directory")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    return p


def make_tiny(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    build_tiny_pipeline(resolution=args.resolution, seed=args.seed).save_pretrained(args.directory)
    logger.info("saved a tiny random-weight pipeline to %s (noise-quality output, for tests)", args.directory)
    return 0
