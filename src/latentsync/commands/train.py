"""The training scripts' command lines: ``train/train_unet.py`` and ``train/train_syncnet.py``.

Both take ``--config`` (a YAML file) and any setting as a ``key=value`` override (YAML value syntax); a run resumes
with ``resume_from_checkpoint=latest`` (or a checkpoint folder).

Exit status: 0 when the run finished; 2, with one line and before anything loads, for settings that cannot be read
or contradict each other, data or models that cannot be found, a Hub that ``push_to_hub`` or
``resume_from_checkpoint=hub`` needs and cannot reach, and a used output folder; 130 after Ctrl-C and 143 after
SIGTERM, with one line naming the last step and checkpoint; 1 when the run finished and saved its result but the
final upload of ``push_to_hub`` failed (one line saying where the result is; the JSON summary has ``push_error``),
and 1 when the run could not write its files (a full disk, a folder turned read-only: one line naming what could not
be written, the free space and the last checkpoint to resume from).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ..errors import STORAGE_ERRNOS, LatentSyncInputError, RunInterrupted
from ..interrupts import interrupt_of, signal_number, stop_on_signals
from ..training.config import TrainingConfig, TrainingConfigError, load_config, load_syncnet_config

UNET_USAGE = """Train the LatentSync U-Net (stage 1 or stage 2) with accelerate.

    accelerate launch train/train_unet.py --config train/configs/unet_stage2.yaml train_data=DATA output_dir=OUT
    python train/train_unet.py --config train/configs/unet_tiny.yaml train_data=clips/ mixed_precision=no

Any setting of `latentsync.training.UNetTrainingConfig` can be overridden as ``key=value`` (YAML value syntax).
Resume a run with ``resume_from_checkpoint=latest`` (or a checkpoint folder); start it again in the same folder with
``overwrite_output_dir=true``. A resume that changes the learning-rate schedule (learning_rate, lr_scheduler,
lr_warmup_steps, max_train_steps) is refused unless ``change_lr_schedule=true``. Results: OUTPUT_DIR/pipeline (and
lora/), checkpoints/, losses.jsonl, history.json, loss_chart.png, logs/ (TensorBoard), val_videos/.
"""

SYNCNET_USAGE = """Train a StableSyncNet (LatentSync's lip-sync expert) with accelerate.

    accelerate launch train/train_syncnet.py --config train/configs/syncnet_16_pixel_attn.yaml \\
        train_data=DATA val_data=VAL_DATA output_dir=outputs/syncnet
    python train/train_syncnet.py --config train/configs/syncnet_tiny.yaml train_data=clips/ max_train_steps=200

DATA is a folder of aligned 25 fps clips with audio, or a `datasets` dataset (saved folder, parquet folder or Hub
id) whose `video` column holds mp4 bytes. Any setting of `latentsync.training.SyncNetTrainingConfig` can be
overridden as ``key=value`` (YAML value syntax; ``model_config.KEY=VALUE`` for one model argument).
Resume with ``resume_from_checkpoint=latest`` (or a checkpoint folder); start again in the same folder with
``overwrite_output_dir=true``. A resume that changes the learning-rate schedule (learning_rate, lr_scheduler,
lr_warmup_steps, max_train_steps) is refused unless ``change_lr_schedule=true``. Results: OUTPUT_DIR/syncnet,
syncnet_best/, checkpoints/, losses.jsonl, history.json, loss_chart.png.
"""

logger = logging.getLogger("latentsync")


def _run(usage: str, load: Callable[..., TrainingConfig], run: tuple[str, str],
         summary: Callable[[dict[str, Any]], dict[str, Any]], argv: list[str] | None) -> int:
    """Parse ``--config`` and the overrides, train, and print a one-line JSON summary of the result; the exit
    status is described in the module docstring. ``load`` reads the settings, ``run`` names the trainer's module
    and function.

    The usage, usage errors and settings that cannot be read (a missing config file, bad YAML, unknown keys) answer
    before torch, accelerate and the trainers are imported (seconds); a signal that arrives while they are imported
    ends the command with one line, as later."""
    parser = argparse.ArgumentParser(description=usage, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (train/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value settings that override the config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = base = None
    try:
        with stop_on_signals():
            if args.config is None and not args.overrides:
                raise TrainingConfigError("no settings given: pass --config train/configs/<name>.yaml and "
                                          "train_data=DATA (see --help)")
            cfg = load(args.config, args.overrides)  # its check of the models' arguments imports torch
            # deferred: the trainers import torch, accelerate and diffusers (seconds); the settings are read first
            base = importlib.import_module("latentsync.training.base")
            result = getattr(importlib.import_module(run[0]), run[1])(cfg)
    except LatentSyncInputError as exc:  # bad settings, missing data or models, no Hub, a used output folder
        hint = ""
        if isinstance(exc, TrainingConfigError) and args.config is None and args.overrides:
            hint = " (no --config given: the settings are the defaults plus the overrides; pass --config " \
                   "train/configs/<name>.yaml)"
        logger.error("%s%s", exc, hint)
        return 2
    except BaseException as exc:  # noqa: BLE001 - Ctrl-C or SIGTERM (RunInterrupted), also behind a library's error
        code = _failure(exc, cfg, base)
        if code is None:
            raise
        return code
    if _main_process():  # under accelerate launch: one summary, from the process that saved the results
        out = summary(result)
        if result.get("push_error"):
            out["push_error"] = result["push_error"]
        print(json.dumps(out))  # the command's output: what the run produced
    return 1 if result.get("push_error") else 0


def _failure(exc: BaseException, cfg: TrainingConfig | None, base: Any) -> int | None:
    """The exit status after ``exc``, once its one line is logged: 1 for files the run could not write (a full disk,
    a folder turned read-only), 128 + the signal after Ctrl-C or SIGTERM; None for any other error (re-raised)."""
    if base is not None and cfg is not None and (isinstance(exc, base.TrainingStorageError) or (
            isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS)):
        if not isinstance(exc, base.TrainingStorageError):
            exc = base.storage_error(cfg, exc.filename or "its files", exc)
        logger.error("%s", exc)
        return 1
    interrupt = interrupt_of(exc)
    if interrupt is None:
        return None
    signum = signal_number(interrupt)
    if base is not None and isinstance(interrupt, base.TrainingInterrupted):  # the trainers' loops name their step
        message = str(interrupt)
    elif cfg is None or base is None:  # while the settings were read or torch and the trainer were imported
        message = f"stopped by {RunInterrupted(signum).signal_name} before the run started"
    else:
        found = base.list_checkpoints(cfg.output_dir)
        message = base.stop_message(RunInterrupted(signum).signal_name, cfg, None, found[-1] if found else None)
    if _main_process():  # under accelerate launch every process is stopped: one line
        logger.error("%s", message)
    return 128 + signum


def _main_process() -> bool:
    """Whether this is the main process of the run (accelerate launch and torchrun set ``RANK``; a plain run has
    one process). Read from the environment, not from accelerate: it is asked also when accelerate's import was
    interrupted, and asking accelerate would start its processes' rendezvous."""
    return os.environ.get("RANK", "0") == "0"


def train_unet_command(argv: list[str] | None = None) -> int:
    """``train/train_unet.py``."""
    def summary(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in ("last_losses", "history")} | {"last": r["last_losses"]}

    return _run(UNET_USAGE, load_config, ("latentsync.training.unet_trainer", "train"), summary, argv)


def train_syncnet_command(argv: list[str] | None = None) -> int:
    """``train/train_syncnet.py``."""
    keys = ("global_step", "final_val", "model_dir", "loss_chart")
    return _run(SYNCNET_USAGE, load_syncnet_config, ("latentsync.training.syncnet_trainer", "train_syncnet"),
                lambda r: {k: r[k] for k in keys}, argv)


if __name__ == "__main__":
    sys.exit(train_unet_command())
