"""The training scripts' command lines: ``train/train_unet.py`` and ``train/train_syncnet.py``.

Both take ``--config`` (a YAML file) and any setting as a ``key=value`` override (YAML value syntax); a run resumes
with ``resume_from_checkpoint=latest`` (or a checkpoint folder). Settings that cannot be read or contradict each
other, models that cannot be found, unusable data and a used output folder end the command with one line and exit
status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from accelerate import PartialState

from ..errors import LatentSyncInputError
from ..training.config import TrainingConfig, load_config, load_syncnet_config
from ..training.syncnet_trainer import train_syncnet
from ..training.unet_trainer import train

UNET_USAGE = """Train the LatentSync U-Net (stage 1 or stage 2) with accelerate.

    accelerate launch train/train_unet.py --config train/configs/unet_stage2.yaml train_data=DATA output_dir=OUT
    python train/train_unet.py --config train/configs/unet_tiny.yaml train_data=clips/ mixed_precision=no

Any setting of `latentsync.training.UNetTrainingConfig` can be overridden as ``key=value`` (YAML value syntax).
Resume a run with ``resume_from_checkpoint=latest`` (or a checkpoint folder); start it again in the same folder with
``overwrite_output_dir=true``. Results: OUTPUT_DIR/pipeline (and lora/), checkpoints/, losses.jsonl, history.json,
loss_chart.png, logs/ (TensorBoard), val_videos/.
"""

SYNCNET_USAGE = """Train a StableSyncNet (LatentSync's lip-sync expert) with accelerate.

    accelerate launch train/train_syncnet.py --config train/configs/syncnet_16_pixel_attn.yaml \\
        train_data=DATA val_data=VAL_DATA output_dir=outputs/syncnet
    python train/train_syncnet.py --config train/configs/syncnet_tiny.yaml train_data=clips/ max_train_steps=200

DATA is a folder of aligned 25 fps clips with audio, or a `datasets` dataset (saved folder, parquet folder or Hub
id) whose `video` column holds mp4 bytes. Any setting of `latentsync.training.SyncNetTrainingConfig` can be
overridden as ``key=value`` (YAML value syntax; ``model_config.KEY=VALUE`` for one model argument).
Resume with ``resume_from_checkpoint=latest`` (or a checkpoint folder); start again in the same folder with
``overwrite_output_dir=true``. Results: OUTPUT_DIR/syncnet, syncnet_best/, checkpoints/, losses.jsonl,
history.json, loss_chart.png.
"""

logger = logging.getLogger("latentsync")


def _run(usage: str, load: Callable[..., TrainingConfig], run: Callable[[Any], dict[str, Any]],
         summary: Callable[[dict[str, Any]], dict[str, Any]], argv: list[str] | None) -> int:
    """Parse ``--config`` and the overrides, train, and print a one-line JSON summary of the result."""
    parser = argparse.ArgumentParser(description=usage, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (train/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value settings that override the config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load(args.config, args.overrides)
        result = run(cfg)
    except LatentSyncInputError as exc:  # bad settings, missing models, unusable data, a used output folder
        logger.error("%s", exc)
        return 2
    if PartialState().is_main_process:  # under accelerate launch: one summary, from the process that saved the results
        print(json.dumps(summary(result)))  # the command's output: what the run produced
    return 0


def train_unet_command(argv: list[str] | None = None) -> int:
    """``train/train_unet.py``."""
    def summary(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in ("last_losses", "history")} | {"last": r["last_losses"]}

    return _run(UNET_USAGE, load_config, train, summary, argv)


def train_syncnet_command(argv: list[str] | None = None) -> int:
    """``train/train_syncnet.py``."""
    keys = ("global_step", "final_val", "model_dir", "loss_chart")
    return _run(SYNCNET_USAGE, load_syncnet_config, train_syncnet, lambda r: {k: r[k] for k in keys}, argv)


if __name__ == "__main__":
    sys.exit(train_unet_command())
