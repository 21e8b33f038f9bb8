"""One process of a multi-process training run for tests/test_distributed_training.py (started by
``accelerate launch``): runs a trainer's command line (``train/train_unet.py`` or ``train/train_syncnet.py``) and,
without changing the trainer, records after every optimisation step a digest of this process's trained weights.
``--kill-at-step K`` makes process ``--kill-rank`` kill itself with SIGKILL right after step K's optimiser step
(no cleanup code runs, as when a machine dies).

    accelerate launch --multi_gpu --num_processes 2 tests/distributed_worker.py unet RECORD_DIR [--kill-at-step K] \
        -- --config CONFIG key=value ...

Writes ``RECORD_DIR/rank<i>.jsonl``: one ``{"step", "sha256", "lr"}`` line per optimisation step of process i, and
``RECORD_DIR/rank<i>_samples.jsonl``: one ``{"dataset_size", "index"}`` line per sample the process loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys

import torch

from latentsync.commands.train import train_syncnet_command, train_unet_command
from latentsync.data.syncnet_dataset import SyncNetDataset
from latentsync.data.unet_dataset import UNetClipDataset
from latentsync.training import base


def weights_digest(optimizer: torch.optim.Optimizer) -> str:
    """SHA-256 of the trained parameters' float32 bytes, in the optimiser's order."""
    digest = hashlib.sha256()
    for group in optimizer.param_groups:
        for param in group["params"]:
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("trainer", choices=("unet", "syncnet"))
    parser.add_argument("record_dir")
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--kill-rank", type=int, default=1)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    command_args = argv[split + 1 :]
    rank = int(os.environ.get("RANK", "0"))  # set by the launcher (PartialState() here would fix accelerate's state
    # before the trainer's Accelerator reads ACCELERATE_USE_CPU)
    os.makedirs(args.record_dir, exist_ok=True)
    record = os.path.join(args.record_dir, f"rank{rank}.jsonl")
    real_step = base.optimizer_step

    def recording_step(accelerator, loss, params, optimizer, lr_scheduler, max_grad_norm):
        real_step(accelerator, loss, params, optimizer, lr_scheduler, max_grad_norm)
        if not accelerator.sync_gradients:
            return
        step = lr_scheduler.scheduler.last_epoch  # optimisation steps so far (restored on resume)
        with open(record, "a") as fh:
            fh.write(json.dumps({"step": step, "sha256": weights_digest(optimizer),
                                 "lr": lr_scheduler.get_last_lr()[0]}) + "\n")
        if step == args.kill_at_step and rank == args.kill_rank:
            os.kill(os.getpid(), signal.SIGKILL)

    def recording_getitem(real_getitem):
        def getitem(dataset, index):
            with open(os.path.join(args.record_dir, f"rank{rank}_samples.jsonl"), "a") as fh:
                fh.write(json.dumps({"dataset_size": len(dataset), "index": int(index)}) + "\n")
            return real_getitem(dataset, index)
        return getitem

    base.optimizer_step = recording_step
    for dataset_class in (UNetClipDataset, SyncNetDataset):
        dataset_class.__getitem__ = recording_getitem(dataset_class.__getitem__)
    command = train_unet_command if args.trainer == "unet" else train_syncnet_command
    return command(command_args)


if __name__ == "__main__":
    sys.exit(main())
