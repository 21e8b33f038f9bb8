"""SyncNet training with accelerate (paper section 3.3).

Binary cross-entropy on the cosine similarity of audio and visual embeddings, positives = aligned windows,
negatives = frames from another time of the same clip. Runs unchanged on one CPU, one GPU or several GPUs
(``accelerate launch``); large effective batches through gradient accumulation. Checkpoints are accelerate states
(model, optimizer, LR scheduler, RNG) plus ``training_state.json`` (step and history) and ``model_config.json``; a
resumed run continues exactly where the interrupted one would have (sample ``i`` of the stream depends only on the
seed and ``i``).

Outputs in ``output_dir``: ``checkpoints/checkpoint-<step>/``, ``syncnet/`` (final model, safetensors, loadable
with ``StableSyncNet.from_pretrained``), ``syncnet_best/`` (lowest validation loss), ``history.json``,
``losses.jsonl``, ``loss_chart.png`` and the settings (``config.yaml``, as the U-Net trainer's).

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
from .._deprecation import moved_attribute
from ..data.clips import ClipSourceInfo, TrainingDataError, check_clip_source
from ..data.syncnet_dataset import ClipStore, SyncNetDataset
from ..eval.syncnet_acc import encode_latents, evaluate_syncnet
from ..loaders.official import load_syncnet
from ..model_source import check_model_sources, check_syncnet_folder, loading
from ..models.syncnet import StableSyncNet, syncnet_bce_loss
from . import base
from .config import SyncNetTrainingConfig, TrainingConfigError, load_syncnet_config  # noqa: F401 - public API

logger = logging.getLogger(__name__)

BEST_FILE = "best_validation.json"
# figures drawn with a reference line in the loss chart: chance level of the BCE loss and of the accuracy
CHANCE_LINES = {"loss": (math.log(2), "chance (ln 2)"), "accuracy": (0.5, "chance")}
SYNCNET_PARAMETER_GROUPS = (
    ("audio encoder", lambda n: n.startswith("audio_encoder.")),
    ("visual encoder", lambda n: n.startswith("visual_encoder.")),
)


# ---------------------------------------------------------------------------------------------------- helpers


def build_syncnet(cfg: SyncNetTrainingConfig) -> StableSyncNet:
    """The model to train: pretrained weights, or a fresh preset/model_config architecture."""
    if cfg.pretrained_model:
        with loading("pretrained_model", cfg.pretrained_model):
            return load_syncnet(cfg.pretrained_model, preset=cfg.model_preset).train()
    if cfg.model_preset is not None:
        return StableSyncNet.from_preset(cfg.model_preset, **(cfg.model_config or {}))
    return StableSyncNet(**cfg.model_config)


def training_plan(cfg: SyncNetTrainingConfig, model: StableSyncNet, vae: AutoencoderKL | None, data: ClipSourceInfo,
                  val_data: ClipSourceInfo | None, accelerator: Accelerator, start_step: int) -> list[str]:
    """The lines logged at the start of a run: data, the model, the frozen VAE, batch and where the results go."""
    mcfg = model.config
    lines = [f"data: {data.describe(cfg.train_data)}, training windows from {cfg.train_time_range} of every clip"]
    if val_data is not None:
        lines.append(f"validation data: {val_data.describe(cfg.val_data)}, windows from {cfg.val_time_range}")
    else:
        lines.append(f"validation: windows from {cfg.val_time_range} of the training clips")
    if data.frame_size is not None:
        w, h = data.frame_size
        size = (mcfg.resolution, mcfg.resolution)
        resize = "" if (w, h) == size else f", resized to {mcfg.resolution} x {mcfg.resolution} px"
        half = f", lower half kept ({mcfg.resolution // 2} x {mcfg.resolution} px)" if mcfg.lower_half else ""
        latent = ", encoded by the VAE" if mcfg.latent_space else ""
        lines.append(f"faces: {w} x {h} px{resize}{half}{latent}; {mcfg.num_frames} frames per window")
    source = f"pretrained_model={cfg.pretrained_model}" if cfg.pretrained_model else (
        f"model_preset={cfg.model_preset}" if cfg.model_preset else "model_config") + " (random init)"
    lines.append(f"SyncNet ({source}), {model.embedding_dim}-d embeddings: "
                 + "\n".join(base.parameter_table(model, SYNCNET_PARAMETER_GROUPS)))
    lines.append("frozen: " + base.frozen_summary({"VAE": vae}))
    per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
    lines.append(f"steps {start_step} -> {cfg.max_train_steps}, {per_step} pairs per step (batch "
                 f"{cfg.train_batch_size} x {cfg.gradient_accumulation_steps} accumulation x "
                 f"{accelerator.num_processes} processes, {cfg.positive_ratio:.0%} in sync), lr {cfg.learning_rate:g} "
                 f"({base.schedule_text(cfg)}), precision {accelerator.mixed_precision}, device {accelerator.device}")
    lines.append(f"output: {cfg.output_dir}/ (checkpoints/ every {cfg.checkpointing_steps} steps, validation every "
                 f"{cfg.validation_steps} steps on {cfg.num_val_samples} pairs, losses.jsonl, history.json, "
                 "loss_chart.png" + (f", {cfg.logging_dir}/ for TensorBoard" if cfg.report_to == "tensorboard" else "")
                 + (", syncnet_best/" if cfg.save_best_model else "") + ", syncnet/ at the end)")
    return lines


# ---------------------------------------------------------------------------------------------------- training


def validate(model: torch.nn.Module, val_loader: DataLoader, accelerator: Accelerator, vae: AutoencoderKL | None,
             cfg: SyncNetTrainingConfig, step: int, log: base.TrainingLog) -> None:
    """Validation loss and accuracies (all pairs, in-sync pairs, off-sync pairs) at ``step``, recorded in ``log``;
    keeps the weights of the lowest loss in ``output_dir/syncnet_best`` when ``save_best_model``."""
    result = evaluate_syncnet(model, val_loader, accelerator=accelerator, vae=vae, progress=cfg.progress)
    log.log_validation(step, {"loss": result.loss, "accuracy": result.accuracy,
                              "positive_accuracy": result.positive_accuracy,
                              "negative_accuracy": result.negative_accuracy},
                       note=f"{result.num_samples} pairs" + (f"; {result.warning}" if result.warning else ""))
    history = log.history
    if cfg.save_best_model and result.loss <= min(history["val_loss"]) and accelerator.is_main_process:
        best_dir = os.path.join(cfg.output_dir, "syncnet_best")
        accelerator.unwrap_model(model).save_pretrained(best_dir, safe_serialization=True)
        with open(os.path.join(best_dir, BEST_FILE), "w") as fh:
            json.dump({"step": step, "val_loss": result.loss, "val_accuracy": result.accuracy}, fh)
        logger.info("best validation loss so far: model saved to %s", best_dir)


def train_syncnet(cfg: SyncNetTrainingConfig) -> dict[str, Any]:
    """Train a StableSyncNet; returns ``{"global_step", "history", "model_dir", "final_val", "best", ...}`` (and
    ``push_error`` when ``push_to_hub`` could not upload the saved model). Ctrl-C or SIGTERM in the loop raises
    [`base.TrainingInterrupted`], naming the last step and checkpoint.

    ``best`` (with ``save_best_model``) is ``{"step", "val_loss", "val_accuracy", "model_dir"}`` of the validation
    with the lowest loss, whose weights are kept in ``output_dir/syncnet_best`` (early stopping: a SyncNet trained on
    little data overfits after its best validation point)."""
    # before anything loads: settings that contradict, data and models that cannot be found, a Hub that push_to_hub
    # or resume_from_checkpoint=hub needs and cannot reach, a folder holding another run
    cfg.validate()
    check_clip_source(cfg.train_data, "train_data")
    check_clip_source(cfg.val_data, "val_data")
    check_model_sources({"pretrained_model": cfg.pretrained_model})
    check_syncnet_folder("pretrained_model", cfg.pretrained_model)
    base.check_hub_settings(cfg)
    base.check_output_dir(cfg)
    # accelerator first: it decides the device, the precision and which process writes files
    accelerator = base.create_accelerator(cfg)
    set_seed(cfg.seed)
    with base.output_dir_claimed(accelerator, cfg):  # no second run into the same folder meanwhile
        return _train_syncnet(cfg, accelerator)


def _train_syncnet(cfg: SyncNetTrainingConfig, accelerator: Accelerator) -> dict[str, Any]:
    """[`train_syncnet`] once the settings are checked and the output folder is held."""
    # the checkpoint to resume from, checked against these settings before anything loads
    resume_path = base.resolve_resume(cfg, accelerator)
    global_step = 0
    if resume_path is not None:
        if base.read_training_state(resume_path) is None:
            raise TrainingConfigError(f"{resume_path} is not a SyncNet training checkpoint (no {base.STATE_FILE})")
        global_step = base.checkpoint_step(resume_path)

    # model (and, for latent-space SyncNets, the frozen VAE that encodes the frames)
    with accelerator.local_main_process_first():  # one download per machine; the others read the cache
        model = build_syncnet(cfg)
    mcfg = model.config
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    vae = None
    if mcfg.latent_space:
        check_model_sources({"vae": cfg.vae})
        vae_dtype = torch.float16 if accelerator.mixed_precision == "fp16" else torch.float32
        with loading("vae", cfg.vae), accelerator.local_main_process_first():
            vae = AutoencoderKL.from_pretrained(cfg.vae, subfolder=cfg.vae_subfolder, torch_dtype=vae_dtype)
        vae.requires_grad_(False).eval().to(accelerator.device)

    # data: sample i of the stream depends only on (seed, i); a resumed run starts after the consumed samples, and
    # each process trains on its slice of every global batch
    per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
    remaining = max(0, cfg.max_train_steps - global_step)
    store_kwargs = dict(resolution=mcfg.resolution, lower_half=mcfg.lower_half, video_column=cfg.video_column,
                        cache_size=cfg.cache_clips)
    with accelerator.local_main_process_first():
        train_clips = ClipStore(cfg.train_data, split=cfg.train_split, **store_kwargs)
        val_clips = ClipStore(cfg.val_data, split=cfg.val_split, **store_kwargs) if cfg.val_data else None
    train_info = train_clips.source.info()
    train_info.check_aligned_faces(cfg.train_data)
    val_info = None
    if val_clips is None:
        val_clips = train_clips
        overlap = cfg.val_time_range[0] < cfg.train_time_range[1] and cfg.train_time_range[0] < cfg.val_time_range[1]
        if overlap:
            logger.warning("validation pairs come from the training clips and time range: val loss is not held out")
    else:
        val_info = val_clips.source.info()
        val_info.check_aligned_faces(cfg.val_data, "val_data")
    sampling = dict(num_frames=mcfg.num_frames, positive_ratio=cfg.positive_ratio,
                    min_negative_offset=cfg.min_negative_offset, max_negative_offset=cfg.max_negative_offset)
    train_set = SyncNetDataset(train_clips, remaining * per_step, time_range=tuple(cfg.train_time_range),
                               hflip=cfg.hflip, seed=cfg.seed, index_offset=global_step * per_step, **sampling)
    val_set = SyncNetDataset(val_clips, cfg.num_val_samples, time_range=tuple(cfg.val_time_range),
                             seed=cfg.seed + 1, **sampling)
    # one pair of each now: windows that do not fit the time ranges end the run here, not at its first validation
    for dataset, setting in ((train_set, "train_time_range"), (val_set, "val_time_range")):
        try:
            dataset.check()
        except TrainingDataError as exc:
            raise TrainingDataError(f"{setting}={list(dataset.time_range)}: {exc}") from None
    # everything loaded: the run folder is written from here on
    base.start_output_dir(accelerator, cfg)
    if accelerator.is_main_process:
        base.log_training_plan("SyncNet training", training_plan(cfg, model, vae, train_info, val_info, accelerator,
                                                                 global_step))
    if cfg.preload_clips:
        train_clips.preload()
        if val_clips is not train_clips:
            val_clips.preload()
    loader_kwargs = dict(num_workers=cfg.dataloader_num_workers, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train_set, batch_size=base.loader_batch_size(accelerator, cfg.train_batch_size),
                              shuffle=False, drop_last=True, **loader_kwargs)
    val_loader = DataLoader(val_set, batch_size=base.loader_batch_size(accelerator, cfg.val_batch_size),
                            shuffle=False, **loader_kwargs)

    # optimiser and schedule, prepared by accelerate; resume restores their states and every process's RNG
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, lr_scheduler = base.create_optimizer(trainable, cfg)
    model, optimizer, train_loader, val_loader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, lr_scheduler
    )
    log = base.TrainingLog(accelerator, cfg, "SyncNet training", reference_lines=CHANCE_LINES)
    if resume_path is not None:
        base.load_checkpoint(accelerator, cfg, resume_path, optimizer, lr_scheduler)
        log.restore(resume_path, global_step)
        logger.info("resumed from %s at step %d", resume_path, global_step)
    elif cfg.resume_from_checkpoint:  # "latest" without a checkpoint: a fresh start in the same folder
        log.restore(None, 0)
    base.init_trackers(accelerator, cfg, "syncnet")
    model_config = dict(accelerator.unwrap_model(model).config)

    # the loop: one optimisation step per gradient_accumulation_steps batches; validate and checkpoint on schedule;
    # Ctrl-C or SIGTERM from here on ends the run with a line naming the last step and checkpoint
    with base.reporting_stop(cfg, log, accelerator):
        model.train()
        progress = tqdm(total=cfg.max_train_steps, initial=global_step, desc="SyncNet steps",
                        disable=not (cfg.progress and accelerator.is_local_main_process))
        step_loss = 0.0
        log.start(global_step)
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
                log.log_train(global_step, {"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]})
                progress.update(1)
                progress.set_postfix(loss=f"{step_loss:.4f}")
                step_loss = 0.0
                if global_step % cfg.validation_steps == 0 or global_step == cfg.max_train_steps:
                    validate(model, val_loader, accelerator, vae, cfg, global_step, log)
                if base.checkpoint_if_due(accelerator, cfg, global_step, log, model_config):
                    break
        progress.close()

        # save the final weights, the history and the chart, and push
        accelerator.wait_for_everyone()
        model_dir = os.path.join(cfg.output_dir, "syncnet")
        push_error = None
        log.save()
        history = log.history
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            with base.saving(cfg, "the trained SyncNet"):
                unwrapped.save_pretrained(model_dir, safe_serialization=True)
            logger.info("saved the trained SyncNet to %s", model_dir)
            if cfg.push_to_hub:
                last = {k: history[k][-1] if history[k] else None for k in ("train_loss", "val_loss", "val_accuracy")}
                card = hub.syncnet_card(cfg.hub_model_id, base_model=hub.hub_id(cfg.pretrained_model),
                                        datasets=base.card_datasets(cfg),
                                        training=base.card_training_info(cfg, global_step, last))
                # a failed upload is logged with where the model is saved; the run is not lost
                push_error = base.push_result(cfg.hub_model_id, model_dir, lambda: hub.push_folder(
                    model_dir, cfg.hub_model_id, card=card, private=cfg.hub_private,
                    commit_message=f"StableSyncNet after {global_step} steps"))
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
        "loss_chart": os.path.join(cfg.output_dir, base.LOSS_CHART),
        **({"push_error": push_error} if push_error else {}),
        "final_val": {
            "loss": history["val_loss"][-1] if history.get("val_loss") else None,
            "accuracy": history["val_accuracy"][-1] if history.get("val_accuracy") else None,
        },
    }


def __getattr__(name: str) -> Any:
    """Names that moved to the shared training base keep working for one release, with a deprecation warning."""
    return moved_attribute(__name__, name)
