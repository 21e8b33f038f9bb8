"""SyncNet training with accelerate (paper section 3.3).

Binary cross-entropy on the cosine similarity of audio and visual embeddings, positives = aligned windows,
negatives = frames from another time of the same clip. Runs unchanged on one CPU, one GPU or several GPUs
(``accelerate launch``); large effective batches through gradient accumulation. Checkpoints are accelerate states
(model, optimizer, LR scheduler, RNG) plus ``training_state.json`` (step and loss history); a resumed run continues
exactly where the interrupted one would have (sample ``i`` of the stream depends only on the seed and ``i``).

Outputs in ``output_dir``: ``checkpoints/checkpoint-<step>/``, ``syncnet/`` (final model, safetensors, loadable
with ``StableSyncNet.from_pretrained``), ``syncnet_best/`` (lowest validation loss), ``history.json``,
``losses.jsonl``, ``loss_chart.png`` and a copy of the config.

[`train_syncnet`] reads top to bottom: set up, build the model and the data, resume, loop, save. Command line:
``train/train_syncnet.py``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import hub
from ..data.syncnet_dataset import ClipStore, SyncNetDataset
from ..eval.syncnet_acc import encode_latents, evaluate_syncnet
from ..loaders.official import load_syncnet
from ..models.syncnet import SYNCNET_CONFIGS, StableSyncNet, syncnet_bce_loss
from . import base
from .config import SyncNetTrainingConfig, load_syncnet_config  # noqa: F401 - load_syncnet_config: public API

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.json"
BEST_FILE = "best_validation.json"


# ---------------------------------------------------------------------------------------------------- helpers


def build_syncnet(cfg: SyncNetTrainingConfig) -> StableSyncNet:
    """The model to train: pretrained weights, or a fresh preset/model_config architecture."""
    if cfg.pretrained_model:
        return load_syncnet(cfg.pretrained_model, preset=cfg.model_preset).train()
    if cfg.model_preset is not None:
        if cfg.model_preset not in SYNCNET_CONFIGS:
            raise ValueError(f"unknown model_preset {cfg.model_preset!r}; choose one of {', '.join(SYNCNET_CONFIGS)}")
        return StableSyncNet.from_preset(cfg.model_preset, **(cfg.model_config or {}))
    return StableSyncNet(**cfg.model_config)


def read_training_state(path: str) -> tuple[int, dict[str, list]]:
    """Step and loss history saved in a SyncNet checkpoint."""
    state_file = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_file):
        raise FileNotFoundError(f"{path} is not a SyncNet training checkpoint (no {STATE_FILE})")
    with open(state_file) as fh:
        state = json.load(fh)
    return int(state["global_step"]), state["history"]


def empty_history() -> dict[str, list]:
    """The loss history of a run that has not started (what ``history.json`` and checkpoints hold)."""
    return {"train_step": [], "train_loss": [], "val_step": [], "val_loss": [], "val_accuracy": []}


def plot_loss_curves(path: str, history: dict[str, list], title: str = "SyncNet training") -> str:
    """Write a PNG with train/val BCE loss (and validation accuracy) against the step."""
    import matplotlib  # deferred: optional (train extra) and slow to import; only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: see above

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if history["train_step"]:
        ax_loss.plot(history["train_step"], history["train_loss"], lw=0.8, alpha=0.5, label="train loss (step)")
        k = max(1, len(history["train_loss"]) // 50)
        if k > 1:
            kernel = torch.ones(k) / k
            smooth = torch.nn.functional.conv1d(torch.tensor(history["train_loss"])[None, None], kernel[None, None])
            ax_loss.plot(history["train_step"][k - 1 :], smooth[0, 0].tolist(), lw=1.5, label=f"train loss (mean {k})")
    if history["val_step"]:
        ax_loss.plot(history["val_step"], history["val_loss"], "o-", lw=1.5, label="val loss")
        ax_acc.plot(history["val_step"], history["val_accuracy"], "o-", color="C2", label="val accuracy")
    ax_loss.axhline(math.log(2), color="gray", ls="--", lw=0.8, label="chance (ln 2)")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("BCE loss")
    ax_loss.legend()
    ax_acc.axhline(0.5, color="gray", ls="--", lw=0.8, label="chance")
    ax_acc.set_ylim(0, 1)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy (cos > 0.5)")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- training


def validate(model: torch.nn.Module, val_loader: DataLoader, accelerator: Accelerator, vae: AutoencoderKL | None,
             cfg: SyncNetTrainingConfig, step: int, history: dict[str, list]) -> None:
    """Validation loss and accuracy at ``step`` (appended to ``history``); keeps the weights of the lowest loss in
    ``output_dir/syncnet_best`` when ``save_best_model``."""
    result = evaluate_syncnet(model, val_loader, accelerator=accelerator, vae=vae, progress=cfg.progress)
    history["val_step"].append(step)
    history["val_loss"].append(result.loss)
    history["val_accuracy"].append(result.accuracy)
    accelerator.log({"val_loss": result.loss, "val_accuracy": result.accuracy}, step=step)
    logger.info("step %d: val loss %.4f, val accuracy %.4f (%d pairs)", step, result.loss, result.accuracy,
                result.num_samples)
    if cfg.save_best_model and result.loss <= min(history["val_loss"]) and accelerator.is_main_process:
        best_dir = os.path.join(cfg.output_dir, "syncnet_best")
        accelerator.unwrap_model(model).save_pretrained(best_dir, safe_serialization=True)
        with open(os.path.join(best_dir, BEST_FILE), "w") as fh:
            json.dump({"step": step, "val_loss": result.loss, "val_accuracy": result.accuracy}, fh)
        logger.info("best validation loss so far: model saved to %s", best_dir)


def train_syncnet(cfg: SyncNetTrainingConfig) -> dict[str, Any]:
    """Train a StableSyncNet; returns ``{"global_step", "history", "model_dir", "final_val", "best", ...}``.

    ``best`` (with ``save_best_model``) is ``{"step", "val_loss", "val_accuracy", "model_dir"}`` of the validation
    with the lowest loss, whose weights are kept in ``output_dir/syncnet_best`` (early stopping: a SyncNet trained on
    little data overfits after its best validation point)."""
    cfg.validate()
    # accelerator first: it decides the device, the precision and which process writes files
    accelerator = base.create_accelerator(cfg)
    set_seed(cfg.seed)
    resume_path = base.resolve_resume(cfg)
    global_step, history = read_training_state(resume_path) if resume_path is not None else (0, empty_history())
    if accelerator.is_main_process:
        base.save_run_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))

    # model (and, for latent-space SyncNets, the frozen VAE that encodes the frames)
    model = build_syncnet(cfg)
    mcfg = model.config
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    vae = None
    if mcfg.latent_space:
        vae_dtype = torch.float16 if accelerator.mixed_precision == "fp16" else torch.float32
        vae = AutoencoderKL.from_pretrained(cfg.vae, subfolder=cfg.vae_subfolder, torch_dtype=vae_dtype)
        vae.requires_grad_(False).eval().to(accelerator.device)

    # data: sample i of the stream depends only on (seed, i); a resumed run starts after the consumed samples
    per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
    remaining = max(0, cfg.max_train_steps - global_step)
    store_kwargs = dict(resolution=mcfg.resolution, lower_half=mcfg.lower_half, video_column=cfg.video_column,
                        cache_size=cfg.cache_clips)
    train_clips = ClipStore(cfg.train_data, split=cfg.train_split, **store_kwargs)
    if cfg.val_data:
        val_clips = ClipStore(cfg.val_data, split=cfg.val_split, **store_kwargs)
    else:
        val_clips = train_clips
        overlap = cfg.val_time_range[0] < cfg.train_time_range[1] and cfg.train_time_range[0] < cfg.val_time_range[1]
        if overlap:
            logger.warning("validation pairs come from the training clips and time range: val loss is not held out")
    if cfg.preload_clips:
        train_clips.preload()
        if val_clips is not train_clips:
            val_clips.preload()
    sampling = dict(num_frames=mcfg.num_frames, positive_ratio=cfg.positive_ratio,
                    min_negative_offset=cfg.min_negative_offset, max_negative_offset=cfg.max_negative_offset)
    train_set = SyncNetDataset(train_clips, remaining * per_step, time_range=tuple(cfg.train_time_range),
                               hflip=cfg.hflip, seed=cfg.seed, index_offset=global_step * per_step, **sampling)
    val_set = SyncNetDataset(val_clips, cfg.num_val_samples, time_range=tuple(cfg.val_time_range),
                             seed=cfg.seed + 1, **sampling)
    loader_kwargs = dict(num_workers=cfg.dataloader_num_workers, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train_set, batch_size=cfg.train_batch_size, shuffle=False, drop_last=True,
                              **loader_kwargs)
    val_loader = DataLoader(val_set, batch_size=cfg.val_batch_size, shuffle=False, **loader_kwargs)

    # optimiser and schedule, prepared by accelerate; resume restores their states and the RNG
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, lr_scheduler = base.create_optimizer(trainable, cfg, accelerator)
    model, optimizer, train_loader, val_loader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, lr_scheduler
    )
    loss_log = base.LossLog(cfg.output_dir, enabled=accelerator.is_main_process)
    if resume_path is not None:
        accelerator.load_state(resume_path)
        loss_log.truncate(global_step)
        logger.info("resumed from %s at step %d", resume_path, global_step)
    base.init_trackers(accelerator, cfg, "syncnet")
    logger.info("***** SyncNet training *****  %d parameters, batch %d x %d accumulation x %d processes, "
                "steps %d -> %d", sum(p.numel() for p in model.parameters()), cfg.train_batch_size,
                cfg.gradient_accumulation_steps, accelerator.num_processes, global_step, cfg.max_train_steps)

    # the loop: one optimisation step per gradient_accumulation_steps batches; validate and checkpoint on schedule
    model.train()
    progress = tqdm(total=cfg.max_train_steps, initial=global_step, desc="SyncNet steps",
                    disable=not (cfg.progress and accelerator.is_local_main_process))
    step_loss = 0.0
    if global_step < cfg.max_train_steps:
        for batch in train_loader:
            with accelerator.accumulate(model):
                frames = batch["frames"]
                if vae is not None:
                    frames = encode_latents(frames, vae, mcfg.num_frames)
                with accelerator.autocast():
                    visual, audio = model(frames, batch["mel"])
                loss = syncnet_bce_loss(visual, audio, batch["label"])
                base.optimizer_step(accelerator, loss, model.parameters(), optimizer, lr_scheduler,
                                    cfg.max_grad_norm)
            step_loss += accelerator.gather(loss.detach()).mean().item() / cfg.gradient_accumulation_steps
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            history["train_step"].append(global_step)
            history["train_loss"].append(step_loss)
            accelerator.log({"train_loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            loss_log.append(global_step, {"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]})
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            step_loss = 0.0
            if global_step % cfg.validation_steps == 0 or global_step == cfg.max_train_steps:
                validate(model, val_loader, accelerator, vae, cfg, global_step, history)
            if global_step % cfg.checkpointing_steps == 0 or global_step == cfg.max_train_steps:
                base.save_checkpoint(accelerator, cfg, global_step,
                                {STATE_FILE: {"global_step": global_step, "history": history}})
                if accelerator.is_main_process:
                    plot_loss_curves(os.path.join(cfg.output_dir, "loss_chart.png"), history)
            if global_step >= cfg.max_train_steps:
                break
    progress.close()

    # save the final weights, the history and the chart, and push
    accelerator.wait_for_everyone()
    model_dir = os.path.join(cfg.output_dir, "syncnet")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(model_dir, safe_serialization=True)
        with open(os.path.join(cfg.output_dir, "history.json"), "w") as fh:
            json.dump(history, fh)
        plot_loss_curves(os.path.join(cfg.output_dir, "loss_chart.png"), history)
        if cfg.push_to_hub:
            last = {k: history[k][-1] if history[k] else None for k in ("train_loss", "val_loss", "val_accuracy")}
            card = hub.syncnet_card(cfg.hub_model_id, base_model=hub.hub_id(cfg.pretrained_model),
                                    datasets=base.card_datasets(cfg),
                                    training=base.card_training_info(cfg, global_step, last))
            hub.push_folder(model_dir, cfg.hub_model_id, card=card, private=cfg.hub_private,
                            commit_message=f"StableSyncNet after {global_step} steps")
    accelerator.end_training()
    best_file = os.path.join(cfg.output_dir, "syncnet_best", BEST_FILE)
    best = None
    if cfg.save_best_model and os.path.isfile(best_file):
        with open(best_file) as fh:
            best = {**json.load(fh), "model_dir": os.path.dirname(best_file)}
    return {
        "global_step": global_step,
        "history": history,
        "model_dir": model_dir,
        "best": best,
        "loss_chart": os.path.join(cfg.output_dir, "loss_chart.png"),
        "final_val": {
            "loss": history["val_loss"][-1] if history["val_loss"] else None,
            "accuracy": history["val_accuracy"][-1] if history["val_accuracy"] else None,
        },
    }
