"""LatentSync U-Net training with accelerate: stage 1 (noise MSE) and stage 2 (pixel-space losses).

[`train`] reads top to bottom: set up the accelerator and the models, choose what trains, build the data, the
optimiser and the schedule, resume, then loop (one optimisation step per ``gradient_accumulation_steps`` batches,
logging, checkpoints, validation videos) and save the pipeline. See ``train/train_unet.py`` for the command line
and ``train/configs/`` for the official setups.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel
from peft import LoraConfig
from tqdm.auto import tqdm

from .. import hub
from ..audio_features.cache import AudioFeatureCache
from ..data.clips import ClipSourceInfo, check_clip_source
from ..data.unet_dataset import EpochSampler, UNetClipDataset
from ..face.mask import latent_mouth_mask, mouth_mask
from ..loaders.lora import save_lora_adapter
from ..media.files import check_input_file
from ..media.video import trim_media
from ..model_source import check_model_sources, check_syncnet_folder
from ..pipeline import LatentSyncPipeline
from ..utils import scale_latents, unscale_latents
from . import base
from .components import (
    TrainingComponents,
    check_start_not_a_run,
    load_components,
    model_sources,
    unet_start,
)
from .config import TrainingConfigError, UNetTrainingConfig
from .losses import lower_half, mixed_noise, predict_x0

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- step
def vae_encode(vae, pixels: torch.Tensor, accelerator: Accelerator | None = None, groups: int = 1) -> torch.Tensor:
    """Clip pixels ``(B, F, 3, H, W)`` -> scaled latents ``(B, 4, F, h, w)`` (posterior sample, its noise drawn for
    the global batch: see [`base.draw_for_global_batch`]; ``groups``: ``pixels`` holds that many batches)."""
    b, f = pixels.shape[:2]
    posterior = vae.encode(pixels.flatten(0, 1).to(vae.dtype)).latent_dist
    mean = posterior.mean
    eps = base.draw_for_global_batch(
        accelerator, lambda shape: torch.randn(shape, device=mean.device, dtype=mean.dtype), mean.shape, groups)
    latents = scale_latents(mean + posterior.std * eps, vae)
    return latents.reshape(b, f, *latents.shape[1:]).transpose(1, 2)


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``(B, 4, F, h, w)`` -> pixels ``(B, F, 3, H, W)`` (differentiable)."""
    b, _, f = latents.shape[:3]
    x = unscale_latents(latents.transpose(1, 2).flatten(0, 1), vae)
    pixels = vae.decode(x.to(vae.dtype)).sample
    return pixels.reshape(b, f, *pixels.shape[1:])


def compute_losses(
    batch: dict[str, torch.Tensor],
    audio_context: torch.Tensor,
    comps: TrainingComponents,
    unet: torch.nn.Module,
    cfg: UNetTrainingConfig,
    accelerator: Accelerator | None = None,
) -> dict[str, torch.Tensor]:
    """All losses of one training batch; ``"loss"`` is their weighted sum.

    The clip is encoded by the VAE (ground truth, ground truth with the mouth masked out, reference), noised at a
    random timestep (mixed noise: shared plus per-frame), and the U-Net predicts the noise: MSE is the stage-1 loss.
    Stage 2 decodes the one-step estimate of the clean latents and adds LPIPS on the lower half, TREPA on the clip
    and the SyncNet loss against the clip's mel window. The random draws are made for the global batch (each process
    keeps its slice), so the result does not depend on how many processes share the batch."""
    vae, scheduler = comps.vae, comps.scheduler
    gt, ref = batch["gt"], batch["ref"]
    device = gt.device
    mask = torch.from_numpy(np.array(mouth_mask(cfg.resolution))).to(device, gt.dtype)[None, None, None]  # (1,1,1,R,R)
    with torch.no_grad():  # one VAE call for the three clips
        gt_latents, masked_latents, ref_latents = vae_encode(vae, torch.cat([gt, gt * mask, ref]), accelerator,
                                                             groups=3).chunk(3)
    b, _, f, h, w = gt_latents.shape
    mask_latent = latent_mouth_mask(cfg.resolution, (h, w)).to(device)[:, :, None].expand(b, 1, f, h, w)
    gt_latents = gt_latents.float()
    if cfg.use_mixed_noise:
        noise = base.draw_for_global_batch(
            accelerator, lambda shape: mixed_noise(shape, cfg.mixed_noise_alpha, device=device), gt_latents.shape)
    else:  # official fallback: one noise map shared by all frames
        noise = base.draw_for_global_batch(accelerator, lambda shape: torch.randn(shape, device=device),
                                           (b, gt_latents.shape[1], 1, h, w)).expand_as(gt_latents).contiguous()
    timesteps = base.draw_for_global_batch(
        accelerator, lambda shape: torch.randint(0, scheduler.config.num_train_timesteps, shape, device=device),
        (b,)).long()
    noisy = scheduler.add_noise(gt_latents, noise, timesteps)
    model_input = torch.cat(
        [noisy, mask_latent.to(noisy.dtype), masked_latents.to(noisy.dtype), ref_latents.to(noisy.dtype)], dim=1
    )
    with _autocast(accelerator, device):
        noise_pred = unet(model_input, timesteps, encoder_hidden_states=audio_context).sample
    losses: dict[str, torch.Tensor] = {"recon": F.mse_loss(noise_pred.float(), noise.float())}
    total = cfg.recon_loss_weight * losses["recon"]
    if cfg.pixel_space_supervise:
        x0 = predict_x0(noisy, noise_pred.float(), timesteps, scheduler.alphas_cumprod)
        with _autocast(accelerator, device):
            frames = vae_decode(vae, x0)
        frames = frames.float()
        if comps.lpips is not None and cfg.perceptual_loss_weight > 0:
            losses["lpips"] = comps.lpips(lower_half(frames.flatten(0, 1)), lower_half(gt.flatten(0, 1).float()))
            total = total + cfg.perceptual_loss_weight * losses["lpips"]
        if comps.trepa is not None and cfg.trepa_loss_weight > 0:
            losses["trepa"] = comps.trepa(frames, gt.float())
            total = total + cfg.trepa_loss_weight * losses["trepa"]
        if comps.sync_loss is not None and cfg.sync_loss_weight > 0:
            losses["sync"] = comps.sync_loss(frames, batch["mel"])
            total = total + cfg.sync_loss_weight * losses["sync"]
    losses["loss"] = total
    return losses


def _autocast(accelerator: Accelerator | None, device: torch.device):
    """The accelerator's mixed-precision context, or a disabled autocast when there is no accelerator."""
    return accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False)


# ---------------------------------------------------------------------------------------------------- setup
def select_trainable(unet: torch.nn.Module, patterns: list[str] | None) -> list[str]:
    """Freeze the U-Net except parameters whose name contains one of ``patterns`` (None: all). Returns the names."""
    unet.requires_grad_(False)
    names = []
    for name, param in unet.named_parameters():
        if patterns is None or any(p in name for p in patterns):
            param.requires_grad_(True)
            names.append(name)
    if not names:
        raise ValueError(f"no U-Net parameter name contains any of {patterns}")
    return names


def add_lora(unet: torch.nn.Module, cfg: UNetTrainingConfig) -> list[str]:
    """Freeze the U-Net and add LoRA adapters (peft) on ``lora_target_modules`` inside the modules selected by
    ``trainable_modules`` (all of them when None). Returns the trainable (LoRA) parameter names."""
    targets = "|".join(re.escape(t) for t in cfg.lora_target_modules)
    scope = "|".join(re.escape(p) for p in cfg.trainable_modules) if cfg.trainable_modules else ""
    pattern = rf"(?=.*(?:{scope})).*\.(?:{targets})" if scope else rf".*\.(?:{targets})"
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank, init_lora_weights="gaussian",
                   target_modules=pattern)
    )
    names = [n for n, p in unet.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError(f"LoRA matched no module for pattern {pattern!r}")
    return names


def run_validation(comps: TrainingComponents, unet: torch.nn.Module, cfg: UNetTrainingConfig, step: int,
                   device: torch.device) -> tuple[str, np.ndarray | None]:
    """Lip-sync the validation clip with the current U-Net; returns the video path and its middle frame."""
    out_dir = os.path.join(cfg.output_dir, "val_videos")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"val_video_{step}.mp4")
    pipe = LatentSyncPipeline(
        unet=unet, vae=comps.vae, audio_encoder=comps.audio_encoder, feature_extractor=comps.feature_extractor,
        scheduler=comps.scheduler, resolution=cfg.resolution,
    )
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="latentsync-val-") as tmp:
            video = trim_media(cfg.validation_video, os.path.join(tmp, "v.mp4"), cfg.validation_seconds, True)
            audio = trim_media(cfg.validation_audio, os.path.join(tmp, "a.wav"), cfg.validation_seconds, False)
            generator = torch.Generator("cpu").manual_seed(cfg.seed)
            out = pipe(video=video, audio=audio, output_path=path, num_inference_steps=cfg.validation_inference_steps,
                       guidance_scale=cfg.validation_guidance_scale, generator=generator, return_frames=True)
    finally:
        unet.train(was_training)
    middle = out.frames[len(out.frames) // 2] if out.frames is not None else None
    return path, middle


def _collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    out = {k: torch.stack([s[k] for s in samples]) for k in ("gt", "ref") + (("mel",) if "mel" in samples[0] else ())}
    out["clip_index"] = torch.tensor([s["clip_index"] for s in samples])
    out["start"] = torch.tensor([s["start"] for s in samples])
    return out


# ---------------------------------------------------------------------------------------------------- main loop
# groups of U-Net parameters for the start-of-run summary (each parameter counts in the first group that matches)
UNET_PARAMETER_GROUPS = (
    ("LoRA adapters", lambda n: "lora_" in n),
    ("temporal layers (motion_modules.)", lambda n: "motion_modules." in n),
    ("audio cross-attention (attn2.)", lambda n: ".attn2." in n),
    ("spatial self-attention (attn1.)", lambda n: ".attn1." in n),
    ("other transformer layers (attentions.)", lambda n: "attentions." in n),
    ("ResNet blocks (resnets.)", lambda n: "resnets." in n),
)


def training_plan(cfg: UNetTrainingConfig, comps: TrainingComponents, unet: torch.nn.Module, data: ClipSourceInfo,
                  accelerator: Accelerator, start_step: int) -> list[str]:
    """The lines logged at the start of a run: data, what of the U-Net trains, the frozen models, losses, batch and
    where the results go."""
    lines = [f"data: {data.describe(cfg.train_data)}"]
    if data.frame_size is not None:
        w, h = data.frame_size
        resize = "" if (w, h) == (cfg.resolution, cfg.resolution) else (
            f", resized to {cfg.resolution} x {cfg.resolution} px for training (resolution={cfg.resolution})")
        lines.append(f"faces: {w} x {h} px{resize}")
    setting, source = unet_start(cfg)
    lines.append(f"U-Net stage {cfg.stage}, temporal layers: {cfg.motion_modules}, weights from "
                 f"{f'{setting}={source}' if source else 'a random init'}: "
                 + "\n".join(base.parameter_table(unet, UNET_PARAMETER_GROUPS)))
    lines.append("frozen: " + base.frozen_summary({
        "VAE": comps.vae, "audio encoder": comps.audio_encoder, "SyncNet": comps.sync_loss, "LPIPS": comps.lpips,
        "TREPA": comps.trepa}))
    lines.append("losses: " + ", ".join(f"{k} x {w:g}" for k, w in cfg.active_losses.items()))
    per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
    lines.append(f"steps {start_step} -> {cfg.max_train_steps}, {per_step} clip{'s' * (per_step != 1)} of "
                 f"{cfg.num_frames} frames per step "
                 f"(batch {cfg.train_batch_size} x {cfg.gradient_accumulation_steps} accumulation x "
                 f"{accelerator.num_processes} processes), lr {cfg.effective_learning_rate(accelerator.num_processes):g} "
                 f"({base.schedule_text(cfg)}), precision "
                 f"{accelerator.mixed_precision}, device {accelerator.device}")
    results = "pipeline/" + (" and lora/" if cfg.lora_rank > 0 else "")
    lines.append(f"output: {cfg.output_dir}/ (checkpoints/ every {cfg.checkpointing_steps} steps, losses.jsonl, "
                 f"history.json, loss_chart.png"
                 + (f", {cfg.logging_dir}/ for TensorBoard" if cfg.report_to == "tensorboard" else "")
                 + (f", val_videos/ every {cfg.validation_steps} steps" if cfg.validation_video else "")
                 + f", {results} at the end)")
    return lines


def _stage_warnings(cfg: UNetTrainingConfig) -> None:
    """Say when a run departs from its stage's usual setup (allowed, but rarely meant)."""
    if cfg.stage == 1 and cfg.motion_modules != "none":
        logger.warning("stage 1 with temporal layers (motion_modules=%s): the official stage 1 has none",
                       cfg.motion_modules)
    if cfg.stage == 1 and (cfg.sync_loss_weight > 0 or cfg.perceptual_loss_weight > 0 or cfg.trepa_loss_weight > 0):
        logger.info("stage 1 trains with the noise MSE only: the SyncNet, LPIPS and TREPA weights are not used")
    if cfg.stage == 2 and cfg.motion_modules == "none":
        logger.warning("stage 2 without temporal layers (motion_modules=none): only the spatial layers can train")
    if cfg.pretrained_unet and cfg.sd_unet:
        logger.info("pretrained_unet=%s is the starting point; sd_unet=%s is not used", cfg.pretrained_unet,
                    cfg.sd_unet)


def train(cfg: UNetTrainingConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary (final step, last losses, output paths, and
    ``push_error`` when ``push_to_hub`` could not upload the saved result).

    Raises:
        LatentSyncInputError: unusable settings, data, models or output folder, before anything loads.
        base.TrainingInterrupted: Ctrl-C or SIGTERM stopped the loop (a ``KeyboardInterrupt`` whose message names
            the last step and checkpoint).
    """
    # before anything loads: settings that contradict, data and models that cannot be found, a Hub that push_to_hub
    # or resume_from_checkpoint=hub needs and cannot reach, a folder holding another run
    cfg.validate()
    check_clip_source(cfg.train_data, "train_data")
    sources = model_sources(cfg)
    check_model_sources(sources)
    check_start_not_a_run(sources)
    if "syncnet" in sources:
        check_syncnet_folder("syncnet", cfg.syncnet, cfg.syncnet_subfolder)
    for setting in ("validation_video", "validation_audio"):  # else every validation fails, with a warning
        if getattr(cfg, setting):
            check_input_file(getattr(cfg, setting), TrainingConfigError, setting)
    base.check_hub_settings(cfg)
    base.check_output_dir(cfg)
    _stage_warnings(cfg)
    # accelerator first: it decides the device, the precision and which process writes files
    accelerator = base.create_accelerator(cfg)
    set_seed(cfg.seed)  # the same on every process: the random draws are made for the global batch
    with base.output_dir_claimed(accelerator, cfg):  # no second run into the same folder meanwhile
        return _train(cfg, accelerator)


def _train(cfg: UNetTrainingConfig, accelerator: Accelerator) -> dict[str, Any]:
    """[`train`] once the settings are checked and the output folder is held."""
    # the checkpoint to resume from, checked against these settings before anything loads
    resume = base.resolve_resume(cfg, accelerator)

    # data before the models (unusable data ends the run at once): sample i of epoch e depends only on (seed, e, i),
    # so a resumed run sees what an uninterrupted one would (each process trains on its slice of every global batch)
    with accelerator.local_main_process_first():
        dataset = UNetClipDataset(cfg.train_data, cfg.resolution, cfg.num_frames, cfg.train_split, cfg.video_column,
                                  return_mel=cfg.stage == 2 and cfg.sync_loss_weight > 0, seed=cfg.seed,
                                  cache_clips=cfg.cache_clips)
    data_info = dataset.source.info()
    data_info.check_aligned_faces(cfg.train_data)
    dataset.check()  # clips too short for num_frames end the run here, not at its first step
    if len(dataset) < cfg.train_batch_size * accelerator.num_processes:
        logger.warning("train_data holds %d clips, fewer than a batch of %d: every step trains on those %d clips",
                       len(dataset), cfg.train_batch_size * accelerator.num_processes, len(dataset))

    # models: the U-Net trains (all of it, chosen modules, or LoRA adapters), the others are frozen
    with accelerator.local_main_process_first():  # one download per machine; the others read the cache
        comps = load_components(cfg)
    unet = comps.unet
    if cfg.lora_rank > 0:
        add_lora(unet, cfg)
    else:
        select_trainable(unet, cfg.trainable_modules)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.pixel_space_supervise:  # the decoder runs with gradients on the stage-2 losses
            comps.vae.enable_gradient_checkpointing()
    unet.train()
    device, frozen_dtype = accelerator.device, base.weight_dtype(accelerator)
    for frozen in (comps.vae, comps.audio_encoder, comps.sync_loss, comps.lpips, comps.trepa):
        if frozen is not None:
            frozen.to(device, dtype=frozen_dtype)

    # optimiser over the trainable parameters (and their EMA), with the learning rate scaled to the batch if asked
    params = [p for p in unet.parameters() if p.requires_grad]
    ema = None
    if cfg.use_ema:
        ema = EMAModel(params, decay=cfg.ema_decay)
        ema.to(device)
    lr = cfg.effective_learning_rate(accelerator.num_processes)
    optimizer, lr_scheduler = base.create_optimizer(params, cfg, lr)

    # everything loaded: the run folder is written from here on
    base.start_output_dir(accelerator, cfg)
    if accelerator.is_main_process:
        base.log_training_plan("U-Net training", training_plan(
            cfg, comps, unet, data_info, accelerator, base.checkpoint_step(resume) if resume else 0))
    batch_size = base.loader_batch_size(accelerator, cfg.train_batch_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), seed=cfg.seed), collate_fn=_collate,
        num_workers=cfg.dataloader_num_workers, drop_last=len(dataset) >= batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    audio_cache = AudioFeatureCache(dataset, comps.feature_extractor, comps.audio_encoder,
                                    cache_dir=os.path.join(cfg.output_dir, "audio_features"))
    base.init_trackers(accelerator, cfg, "latentsync-unet")

    # resume: model, optimiser, schedule, EMA and every process's RNG state from the checkpoint, and the data position
    # from its step
    global_step = 0
    log = base.TrainingLog(accelerator, cfg, f"LatentSync U-Net, stage {cfg.stage}")
    if resume:
        base.load_checkpoint(accelerator, cfg, resume, optimizer, lr_scheduler)
        if ema is not None:  # the EMA shadow weights come back on the CPU
            ema.to(device)
        global_step = base.checkpoint_step(resume)
        log.restore(resume, global_step)
        logger.info("resumed from %s at step %d", resume, global_step)
    elif cfg.resume_from_checkpoint:  # "latest" without a checkpoint: a fresh start in the same folder
        log.restore(None, 0)
    model_config = dict(accelerator.unwrap_model(unet).config)
    batches_per_epoch = len(loader)
    first_epoch, skip = divmod(global_step * cfg.gradient_accumulation_steps, batches_per_epoch)
    num_epochs = math.ceil(cfg.max_train_steps * cfg.gradient_accumulation_steps / batches_per_epoch)

    # the loop: losses of every micro-batch are averaged into the step's log line; Ctrl-C or SIGTERM from here on
    # ends the run with a line naming the last step and checkpoint (base.reporting_stop)
    with base.reporting_stop(cfg, log, accelerator):
        progress = tqdm(total=cfg.max_train_steps, initial=global_step, desc="Steps",
                        disable=not accelerator.is_local_main_process)
        accum: dict[str, float] = {}
        last: dict[str, float] = {}
        log.start(global_step)
        for epoch in range(first_epoch, num_epochs):
            if global_step >= cfg.max_train_steps:
                break
            loader.set_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, skip) if epoch == first_epoch and skip else loader
            for batch in epoch_loader:
                with accelerator.accumulate(unet):
                    context = audio_cache.contexts(batch["clip_index"], batch["start"], cfg.num_frames)
                    context = context.to(device, dtype=torch.float32)
                    losses = compute_losses(batch, context, comps, unet, cfg, accelerator)
                    base.optimizer_step(accelerator, losses["loss"], params, optimizer, lr_scheduler,
                                        cfg.max_grad_norm)
                for k, v in losses.items():
                    value = accelerator.gather(v.detach()[None]).mean().item()
                    accum[k] = accum.get(k, 0.0) + value / cfg.gradient_accumulation_steps
                if not accelerator.sync_gradients:
                    continue
                if ema is not None:
                    ema.step(params)
                global_step += 1
                progress.update(1)
                last = dict(accum, lr=lr_scheduler.get_last_lr()[0])
                accum = {}
                progress.set_postfix(loss=f"{last['loss']:.4f}")
                log.log_train(global_step, last)
                if (cfg.validation_video and accelerator.is_main_process
                        and (global_step % cfg.validation_steps == 0 or global_step == cfg.max_train_steps)):
                    _validate(accelerator, comps, unet, ema, params, cfg, global_step, device, log)
                if base.checkpoint_if_due(accelerator, cfg, global_step, log, model_config):
                    break
        progress.close()

        # save the pipeline (EMA weights when enabled) and push it
        accelerator.wait_for_everyone()
        log.save()
        result: dict[str, Any] = {"global_step": global_step, "last_losses": last, "loss_log": log.path,
                                  "history": log.history}
        if accelerator.is_main_process:
            with base.saving(cfg, "the trained pipeline"):
                pipe, result["pipeline"] = save_final_pipeline(accelerator.unwrap_model(unet), ema, params, comps,
                                                               cfg, global_step, last)
            if cfg.lora_rank > 0:
                result["lora"] = os.path.join(cfg.output_dir, "lora")
            if cfg.push_to_hub and (error := push_final(pipe, cfg, global_step, last)):
                result["push_error"] = error  # logged with where the result is saved: the run is not lost
        accelerator.end_training()
    return result


def _validate(accelerator: Accelerator, comps: TrainingComponents, unet: torch.nn.Module, ema: EMAModel | None,
              params: list[torch.nn.Parameter], cfg: UNetTrainingConfig, step: int, device: torch.device,
              log: base.TrainingLog) -> None:
    """Write a validation video with the current weights (the EMA weights when enabled) and show its middle frame in
    tensorboard; a failure is logged, not raised. Runs on the main process only, leaving its RNG as it was."""
    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        with base.rng_kept(accelerator):
            path, frame = run_validation(comps, model, cfg, step, device)
    except Exception as exc:  # noqa: BLE001 - a failed preview must not stop a long training run
        logger.warning("validation at step %d failed: %s", step, exc)
        return
    finally:
        if ema is not None:
            ema.restore(params)
    log.log_validation(step, {"video": path})
    if frame is not None:
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"validation/middle_frame": frame[None]}, step, dataformats="NHWC")


def card_info(cfg: UNetTrainingConfig, step: int | None = None,
              losses: dict[str, float] | None = None) -> tuple[str | None, dict[str, Any], list[str] | None]:
    """What the model cards say about a run: its base model's Hub id, the training table and the Hub datasets."""
    base_model = hub.hub_id(unet_start(cfg)[1])
    training = base.card_training_info(cfg, step if step is not None else cfg.max_train_steps,
                                       {f"final {k} loss" if k != "loss" else "final loss": v
                                        for k, v in (losses or {}).items() if k != "lr"})
    training["stage"] = cfg.stage
    return base_model, training, base.card_datasets(cfg)


def save_pipeline(unet: torch.nn.Module, comps: TrainingComponents, cfg: UNetTrainingConfig, out: str,
                  lora_dir: str | None = None, step: int | None = None,
                  losses: dict[str, float] | None = None) -> LatentSyncPipeline:
    """Save ``unet`` with the frozen components as a loadable pipeline in ``out`` (float32) with its model card. A
    U-Net with a LoRA adapter: the adapter is saved to ``lora_dir`` first in diffusers' LoRA format, with the record
    of its base model (see [`latentsync.loaders.lora`]) and its card, then fused into the saved weights."""
    base_model, training, datasets = card_info(cfg, step, losses)
    if getattr(unet, "peft_config", None):
        if lora_dir:
            save_lora_adapter(unet, lora_dir, source=unet_start(cfg)[1], trained_steps=step)
            hub.adapter_card(cfg.hub_model_id or lora_dir, base_model, cfg.lora_rank, cfg.lora_target_modules,
                             datasets, {**training, "LoRA rank": cfg.lora_rank}).save(os.path.join(lora_dir,
                                                                                                    hub.CARD_NAME))
        unet.fuse_lora()
        unet.unload_lora()
    unet = unet.to(torch.float32)
    if hasattr(unet, "disable_gradient_checkpointing"):
        unet.disable_gradient_checkpointing()
    pipe = LatentSyncPipeline(unet=unet.eval(), vae=comps.vae.to(torch.float32),
                              audio_encoder=comps.audio_encoder.to(torch.float32),
                              feature_extractor=comps.feature_extractor, scheduler=comps.scheduler,
                              resolution=cfg.resolution)
    pipe.save_pretrained(out)
    hub.pipeline_card(pipe, out, base_model=base_model, datasets=datasets, training=training).save(
        os.path.join(out, hub.CARD_NAME))
    return pipe


def save_final_pipeline(unet: torch.nn.Module, ema: EMAModel | None, params: list[torch.nn.Parameter] | None,
                        comps: TrainingComponents, cfg: UNetTrainingConfig, step: int | None = None,
                        losses: dict[str, float] | None = None) -> tuple[LatentSyncPipeline, str]:
    """Save the trained pipeline to ``output_dir/pipeline`` (EMA weights when enabled; a LoRA adapter saved to
    ``output_dir/lora`` and fused) with model cards; returns the pipeline and its folder."""
    if ema is not None:
        ema.copy_to(params)
    out = os.path.join(cfg.output_dir, "pipeline")
    pipe = save_pipeline(unet, comps, cfg, out, os.path.join(cfg.output_dir, "lora"), step, losses)
    logger.info("saved the trained pipeline to %s", out)
    return pipe, out


def push_final(pipe: LatentSyncPipeline, cfg: UNetTrainingConfig, step: int | None = None,
               losses: dict[str, float] | None = None) -> str | None:
    """Push a run's saved result to ``hub_model_id``: the adapter (LoRA runs, plus the merged pipeline to
    ``hub_merged_model_id`` when set) or the pipeline. A failed upload is logged with where the result is saved
    ([`base.push_result`]) and its message returned; None when every upload went through."""
    out = os.path.join(cfg.output_dir, "pipeline")
    lora_dir = os.path.join(cfg.output_dir, "lora")
    base_model, training, datasets = card_info(cfg, step, losses)
    message = f"U-Net stage {cfg.stage}, {training['optimisation steps']} steps"
    if cfg.lora_rank > 0:
        error = base.push_result(cfg.hub_model_id, lora_dir, lambda: hub.push_folder(
            lora_dir, cfg.hub_model_id, private=cfg.hub_private, commit_message=f"LoRA: {message}"))
    else:
        error = base.push_result(cfg.hub_model_id, out, lambda: pipe.push_folder_to_hub(
            out, cfg.hub_model_id, message, cfg.hub_private, base_model=base_model, training=training,
            datasets=datasets))
    if cfg.lora_rank > 0 and cfg.hub_merged_model_id:
        error = base.push_result(cfg.hub_merged_model_id, out, lambda: pipe.push_folder_to_hub(
            out, cfg.hub_merged_model_id, f"Merged LoRA: {message}", cfg.hub_private, base_model=base_model,
            training=training, datasets=datasets)) or error
    return error
