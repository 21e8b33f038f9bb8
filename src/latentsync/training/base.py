"""What both trainers do the same way: the accelerator, the optimiser step, checkpoints, the loss log, the run's
saved settings.

Checkpoints are ``accelerator.save_state`` folders (model, optimiser, LR scheduler, registered objects, RNG states)
named ``checkpoint-<step>`` under ``output_dir/checkpoints``. Each is written to a hidden temporary folder and
renamed when complete, so a run killed while saving never leaves a checkpoint that ``latest`` would pick and fail
to load.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from huggingface_hub import HfApi, snapshot_download

from .. import hub
from .config import TrainingConfig

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
HUB_CHECKPOINTS = "checkpoints"  # where checkpoints go in a Hub repo (as in output_dir)
LOSS_LOG = "losses.jsonl"


# ---------------------------------------------------------------------------------------------------- setup
def create_accelerator(cfg: TrainingConfig) -> Accelerator:
    """An ``Accelerator`` for the run: mixed precision (fp16 needs a GPU: fp32 without one), gradient accumulation,
    trackers logging to ``output_dir/logging_dir``; TF32 matmuls on Ampere GPUs when ``allow_tf32``."""
    mixed_precision = cfg.mixed_precision
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        logger.warning("fp16 mixed precision needs a GPU: training in fp32")
        mixed_precision = "no"
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=cfg.report_to,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir,
                                            logging_dir=os.path.join(cfg.output_dir, cfg.logging_dir)),
    )
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype of the frozen models under the accelerator's mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def save_run_config(cfg: TrainingConfig, path: str) -> None:
    """Write the run's settings next to its outputs (YAML or JSON by the file's ending)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        if path.endswith((".yaml", ".yml")):
            yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
        else:
            json.dump(cfg.to_dict(), fh, indent=2)


def init_trackers(accelerator: Accelerator, cfg: TrainingConfig, project: str) -> None:
    """Start the trackers of ``report_to`` (main process) with the run's scalar settings."""
    if accelerator.is_main_process and cfg.report_to:
        scalars = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(project, config=scalars)


def create_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainingConfig, accelerator: Accelerator,
                     learning_rate: float | None = None) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over ``params`` and the LR schedule ``cfg.lr_scheduler`` (warm-up and length counted in steps of every
    process, as accelerate steps the schedule once per process)."""
    optimizer = torch.optim.AdamW(params, lr=learning_rate or cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer,
                                 num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=cfg.max_train_steps * accelerator.num_processes)
    return optimizer, lr_scheduler


def optimizer_step(accelerator: Accelerator, loss: torch.Tensor, params: Iterable[torch.nn.Parameter],
                   optimizer: torch.optim.Optimizer, lr_scheduler: Any, max_grad_norm: float) -> None:
    """Backward pass, gradient clipping on the step that updates, and the optimiser / LR scheduler step (inside
    ``accelerator.accumulate``, which turns the step into a no-op until the last micro-batch)."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and max_grad_norm > 0:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, HUB_CHECKPOINTS)


def checkpoint_step(path: str) -> int:
    """The step a checkpoint folder was saved at (from its name)."""
    return int(os.path.basename(os.path.normpath(path))[len(CHECKPOINT_PREFIX):])


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints of the run in ``output_dir``, oldest first."""
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    names = [d for d in os.listdir(root) if d.startswith(CHECKPOINT_PREFIX) and d[len(CHECKPOINT_PREFIX):].isdigit()]
    return [os.path.join(root, d) for d in sorted(names, key=checkpoint_step)]


def resolve_resume(cfg: TrainingConfig) -> str | None:
    """Folder to resume from: ``resume_from_checkpoint`` itself, with ``latest`` the newest checkpoint of
    ``output_dir``, with ``hub`` the newest checkpoint pushed to ``hub_model_id`` (downloaded); None, starting from
    scratch, when there is none."""
    if not cfg.resume_from_checkpoint:
        return None
    if cfg.resume_from_checkpoint == "hub":
        return download_hub_checkpoint(cfg)
    if cfg.resume_from_checkpoint == "latest":
        found = list_checkpoints(cfg.output_dir)
        if not found:
            logger.info("no checkpoint in %s: starting from scratch", cfg.output_dir)
            return None
        return found[-1]
    if not os.path.isdir(cfg.resume_from_checkpoint):
        raise FileNotFoundError(f"checkpoint folder not found: {cfg.resume_from_checkpoint}")
    return cfg.resume_from_checkpoint


def save_checkpoint(accelerator: Accelerator, cfg: TrainingConfig, step: int,
                    extra_json: dict[str, Any] | None = None) -> str:
    """Save the accelerator state (and ``extra_json``: file name -> JSON data) as ``checkpoint-<step>``, atomically,
    then delete the oldest checkpoints beyond ``checkpoints_total_limit``."""
    root = checkpoint_root(cfg.output_dir)
    final = os.path.join(root, f"{CHECKPOINT_PREFIX}{step}")
    tmp = os.path.join(root, f".tmp-{CHECKPOINT_PREFIX}{step}")
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, data in (extra_json or {}).items():
            with open(os.path.join(tmp, name), "w") as fh:
                json.dump(data, fh)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        if cfg.checkpoints_total_limit:
            for old in list_checkpoints(cfg.output_dir)[: -cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
        if cfg.push_to_hub and cfg.hub_strategy != "end":
            push_checkpoint(cfg, final)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------------- Hub
def push_checkpoint(cfg: TrainingConfig, path: str) -> None:
    """Upload the checkpoint folder ``path`` to ``checkpoints/<its name>`` of ``hub_model_id``; with
    ``hub_strategy="checkpoint"`` the older checkpoints leave the repo in the same commit. A failed upload is logged
    and training goes on (the next checkpoint tries again)."""
    name = os.path.basename(os.path.normpath(path))
    try:
        hub.push_folder(
            checkpoint_root(cfg.output_dir), cfg.hub_model_id, path_in_repo=HUB_CHECKPOINTS, private=cfg.hub_private,
            allow_patterns=[f"{name}/*"], commit_message=f"Training checkpoint {name}",
            delete_patterns=[f"{CHECKPOINT_PREFIX}*"] if cfg.hub_strategy == "checkpoint" else None,
        )
    except Exception as exc:  # noqa: BLE001 - a network failure must not end a long run; the model is safe on disk
        logger.warning("could not push %s to %s: %s", name, cfg.hub_model_id, exc)


def card_training_info(cfg: TrainingConfig, step: int, results: dict[str, float]) -> dict[str, Any]:
    """The training table of a trained model's card: data, steps, batch, learning rate, precision, and ``results``
    (e.g. final loss, validation accuracy) rounded for reading."""
    batch = cfg.train_batch_size * cfg.gradient_accumulation_steps
    info: dict[str, Any] = {"training data": f"`{cfg.train_data}`", "optimisation steps": step,
                            "batch (per process x accumulation)": batch, "learning rate": cfg.learning_rate,
                            "mixed precision": cfg.mixed_precision}
    info.update({name: f"{value:.4g}" for name, value in results.items() if value is not None})
    return info


def card_datasets(cfg: TrainingConfig) -> list[str] | None:
    """The Hub datasets a run trained on (for the model card's metadata)."""
    dataset = hub.hub_id(cfg.train_data)
    return [dataset] if dataset else None


def download_hub_checkpoint(cfg: TrainingConfig) -> str | None:
    """Download the newest ``checkpoints/checkpoint-<step>`` of ``hub_model_id`` into ``output_dir/checkpoints``;
    returns its local folder, or None when the repo holds no checkpoint."""
    pattern = re.compile(rf"^{HUB_CHECKPOINTS}/{CHECKPOINT_PREFIX}(\d+)/")
    files = HfApi().list_repo_files(cfg.hub_model_id)
    steps = sorted({int(m.group(1)) for f in files if (m := pattern.match(f))})
    if not steps:
        logger.info("no checkpoint in %s: starting from scratch", cfg.hub_model_id)
        return None
    name = f"{CHECKPOINT_PREFIX}{steps[-1]}"
    snapshot_download(cfg.hub_model_id, allow_patterns=[f"{HUB_CHECKPOINTS}/{name}/*"], local_dir=cfg.output_dir)
    logger.info("downloaded %s from %s", name, cfg.hub_model_id)
    return os.path.join(checkpoint_root(cfg.output_dir), name)


# ---------------------------------------------------------------------------------------------------- loss log
class LossLog:
    """One JSON line per optimisation step, ``{"step": ..., <loss name>: value, ...}``, in ``output_dir``; only the
    main process writes."""

    def __init__(self, output_dir: str, enabled: bool = True):
        self.path = os.path.join(output_dir, LOSS_LOG)
        self.enabled = enabled

    def truncate(self, last_step: int) -> None:
        """Drop the steps an interrupted run logged after the checkpoint it is resumed from."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        with open(self.path) as fh:
            rows = [line for line in fh if line.strip() and json.loads(line)["step"] <= last_step]
        with open(self.path, "w") as fh:
            fh.writelines(rows)

    def append(self, step: int, values: dict[str, float]) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"step": step, **values}) + "\n")
