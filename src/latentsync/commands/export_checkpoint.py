"""``latentsync export-checkpoint RUN_DIR [--step N] OUTPUT``: a training checkpoint -> a loadable model folder."""

from __future__ import annotations

import argparse
import json
import logging

from ..training.export import export_checkpoint

logger = logging.getLogger("latentsync")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentsync export-checkpoint",
        description="Turn a checkpoint of a training run (train/train_unet.py or train/train_syncnet.py) into a "
                    "loadable model folder, without modifying the run: a LatentSync pipeline (with OUTPUT/lora for a "
                    "LoRA run) or a StableSyncNet.")
    p.add_argument("run_dir", help="the run's output_dir (holds checkpoints/checkpoint-<step>)")
    p.add_argument("output", help="folder to write (outside the run folder)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest)")
    ema = p.add_mutually_exclusive_group()
    ema.add_argument("--ema", dest="use_ema", action="store_true", default=None,
                     help="use the EMA weights (the default when the run kept an EMA)")
    ema.add_argument("--no-ema", dest="use_ema", action="store_false", help="use the raw weights of an EMA run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    return p


def export_checkpoint_command(argv: list[str]) -> int:
    """``latentsync export-checkpoint``: prints what was written as one JSON line."""
    args = parser().parse_args(argv)
    result = export_checkpoint(args.run_dir, args.output, step=args.step, use_ema=args.use_ema,
                               overwrite=args.overwrite)
    print(json.dumps(result))  # the command's output: what was written where
    return 0
