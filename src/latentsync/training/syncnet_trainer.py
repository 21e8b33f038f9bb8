"""SyncNet training with accelerate (spec section 5.4; paper section 3.3).

Binary cross-entropy on the cosine similarity of audio and visual embeddings, positives = aligned windows,
negatives = frames from another time of the same clip. Runs unchanged on one CPU, one GPU or several GPUs
(``accelerate launch``); large effective batches through gradient accumulation. Checkpoints are accelerate states
(model, optimizer, LR scheduler, RNG) plus ``training_state.json`` (step and loss history); a resumed run continues
exactly where the interrupted one would have (sample ``i`` of the stream depends only on the seed and ``i``).

Outputs in ``output_dir``: ``checkpoints/checkpoint-<step>/``, ``syncnet/`` (final model, safetensors, loadable
with ``StableSyncNet.from_pretrained``), ``history.json``, ``loss_chart.png`` and a copy of the config.

Command line: ``train/train_syncnet.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from .config import load_settings

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
BEST_FILE = "best_validation.json"


@dataclass
class SyncNetTrainingConfig:
    """Every setting of ``train/train_syncnet.py``. Defaults follow the official ``syncnet_16_pixel_attn.yaml``.

    Model:
        model_preset: official architecture (``16_pixel_attn``, ``16_pixel``, ``16_latent``, ``25_pixel``) or None.
        model_config: StableSyncNet arguments applied on top of the preset (all of them when the preset is None).
        pretrained_model: start from these weights (``from_pretrained`` folder/Hub id, or official
            ``stable_syncnet.pt``); its architecture then wins over preset/model_config.
        vae / vae_subfolder: SD VAE for latent-space SyncNets.
    Data (see [`SyncNetDataset`]): ``train_data``/``val_data`` are a folder of aligned 25 fps clips, a video file, or
        a ``datasets`` dataset (saved folder, parquet folder or Hub id) with mp4 bytes in ``video_column``. Without
        ``val_data`` the validation pairs come from the training clips, restricted to ``val_time_range`` (use
        disjoint time ranges to validate on held-out seconds). ``num_frames``, resolution and lower-half cropping
        come from the model config.
    Validation: every ``validation_steps`` on ``num_val_samples`` pairs; ``save_best_model`` keeps the weights of the
        lowest validation loss in ``output_dir/syncnet_best`` (the final weights go to ``output_dir/syncnet``).
    """

    # model
    model_preset: str | None = "16_pixel_attn"
    model_config: dict[str, Any] | None = None
    pretrained_model: str | None = None
    vae: str = "stabilityai/sd-vae-ft-mse"
    vae_subfolder: str | None = None
    # data
    train_data: str | None = None
    train_split: str = "train"
    val_data: str | None = None
    val_split: str = "validation"
    video_column: str = "video"
    train_time_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    val_time_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    positive_ratio: float = 0.5
    min_negative_offset: int = 1
    max_negative_offset: int | None = None
    hflip: bool = False
    cache_clips: int = 16
    preload_clips: bool = False
    dataloader_num_workers: int = 2
    # optimisation
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    train_batch_size: int = 256
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 1_000_000
    mixed_precision: str = "fp16"
    gradient_checkpointing: bool = False
    allow_tf32: bool = True
    seed: int = 42
    # validation
    validation_steps: int = 2500
    num_val_samples: int = 2048
    val_batch_size: int = 40
    save_best_model: bool = True
    # bookkeeping
    output_dir: str = "outputs/syncnet"
    logging_dir: str = "logs"
    report_to: str | None = None
    checkpointing_steps: int = 2500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent setting."""
        if not self.train_data:
            raise ValueError("train_data is not set (folder of aligned clips, or a datasets path/id)")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in ("train_time_range", "val_time_range"):
            r = getattr(self, name)
            if len(r) != 2 or not 0 <= r[0] < r[1] <= 1:
                raise ValueError(f"{name} must be [start, end] fractions with 0 <= start < end <= 1, got {r}")
        for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "validation_steps",
                     "checkpointing_steps", "num_val_samples", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model_preset is None and not self.model_config and not self.pretrained_model:
            raise ValueError("set model_preset, model_config or pretrained_model")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id")


def load_syncnet_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> SyncNetTrainingConfig:
    """SyncNet training settings from a YAML file and ``key=value`` overrides (``model_config.key=value`` sets one
    model argument; see [`latentsync.training.config.load_settings`])."""
    return load_settings(SyncNetTrainingConfig, path, overrides)


# ---------------------------------------------------------------------------------------------------- helpers


def build_syncnet(cfg: SyncNetTrainingConfig):
    """The model to train: pretrained weights, or a fresh preset/model_config architecture."""
    from ..models.syncnet import SYNCNET_CONFIGS, StableSyncNet

    if cfg.pretrained_model:
        path = cfg.pretrained_model
        if os.path.isfile(path):
            from ..conversion import load_official_syncnet

            return load_official_syncnet(path, preset=cfg.model_preset).train()
        return StableSyncNet.from_pretrained(path).train()
    if cfg.model_preset is not None:
        if cfg.model_preset not in SYNCNET_CONFIGS:
            raise ValueError(f"unknown model_preset {cfg.model_preset!r}; choose one of {', '.join(SYNCNET_CONFIGS)}")
        return StableSyncNet.from_preset(cfg.model_preset, **(cfg.model_config or {}))
    return StableSyncNet(**cfg.model_config)


def _checkpoints(output_dir: str) -> list[str]:
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = [d for d in os.listdir(root) if d.startswith(CHECKPOINT_PREFIX) and d[len(CHECKPOINT_PREFIX):].isdigit()]
    names.sort(key=lambda d: int(d[len(CHECKPOINT_PREFIX):]))
    return [os.path.join(root, d) for d in names]


def resolve_checkpoint(cfg: SyncNetTrainingConfig) -> str | None:
    """Folder to resume from: ``latest`` picks the newest checkpoint in ``output_dir`` (None when there is none)."""
    if not cfg.resume_from_checkpoint:
        return None
    if cfg.resume_from_checkpoint == "latest":
        found = _checkpoints(cfg.output_dir)
        if not found:
            logger.info("no checkpoint in %s: starting from scratch", cfg.output_dir)
            return None
        return found[-1]
    path = cfg.resume_from_checkpoint
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    return path


def empty_history() -> dict[str, list]:
    return {"train_step": [], "train_loss": [], "val_step": [], "val_loss": [], "val_accuracy": []}


def plot_loss_curves(path: str, history: dict[str, list], title: str = "SyncNet training") -> str:
    """Write a PNG with train/val BCE loss (and validation accuracy) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def train_syncnet(cfg: SyncNetTrainingConfig) -> dict[str, Any]:
    """Train a StableSyncNet; returns ``{"global_step", "history", "model_dir", "final_val", "best", ...}``.

    ``best`` (with ``save_best_model``) is ``{"step", "val_loss", "val_accuracy", "model_dir"}`` of the validation
    with the lowest loss, whose weights are kept in ``output_dir/syncnet_best`` (early stopping: a SyncNet trained on
    little data overfits after its best validation point)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..data.syncnet_dataset import ClipStore, SyncNetDataset
    from ..eval.syncnet_acc import encode_latents, evaluate_syncnet
    from ..models.syncnet import syncnet_bce_loss

    cfg.validate()
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
    set_seed(cfg.seed)

    resume_path = resolve_checkpoint(cfg)
    global_step, history = 0, empty_history()
    if resume_path is not None:
        state_file = os.path.join(resume_path, STATE_FILE)
        if not os.path.isfile(state_file):
            raise FileNotFoundError(f"{resume_path} is not a SyncNet training checkpoint (no {STATE_FILE})")
        with open(state_file) as fh:
            state = json.load(fh)
        global_step, history = int(state["global_step"]), state["history"]

    if accelerator.is_main_process:
        os.makedirs(cfg.output_dir, exist_ok=True)
        with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as fh:
            yaml.safe_dump(dataclasses.asdict(cfg), fh, sort_keys=False)

    model = build_syncnet(cfg)
    mcfg = model.config
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    vae = None
    if mcfg.latent_space:
        from diffusers import AutoencoderKL

        vae_dtype = torch.float16 if mixed_precision == "fp16" else torch.float32
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

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
    )
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer,
                                 num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=cfg.max_train_steps * accelerator.num_processes)
    model, optimizer, train_loader, val_loader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, lr_scheduler
    )
    if resume_path is not None:
        accelerator.load_state(resume_path)
        logger.info("resumed from %s at step %d", resume_path, global_step)
    if accelerator.is_main_process and cfg.report_to:
        accelerator.init_trackers("syncnet", config={k: v for k, v in dataclasses.asdict(cfg).items()
                                                     if isinstance(v, (int, float, str, bool))})

    logger.info("***** SyncNet training *****  %d parameters, batch %d x %d accumulation x %d processes, "
                "steps %d -> %d", sum(p.numel() for p in model.parameters()), cfg.train_batch_size,
                cfg.gradient_accumulation_steps, accelerator.num_processes, global_step, cfg.max_train_steps)

    best_dir = os.path.join(cfg.output_dir, "syncnet_best")

    def validate() -> None:
        result = evaluate_syncnet(model, val_loader, accelerator=accelerator, vae=vae, progress=cfg.progress)
        history["val_step"].append(global_step)
        history["val_loss"].append(result.loss)
        history["val_accuracy"].append(result.accuracy)
        accelerator.log({"val_loss": result.loss, "val_accuracy": result.accuracy}, step=global_step)
        logger.info("step %d: val loss %.4f, val accuracy %.4f (%d pairs)", global_step, result.loss,
                    result.accuracy, result.num_samples)
        if cfg.save_best_model and result.loss <= min(history["val_loss"]) and accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(best_dir, safe_serialization=True)
            with open(os.path.join(best_dir, BEST_FILE), "w") as fh:
                json.dump({"step": global_step, "val_loss": result.loss, "val_accuracy": result.accuracy}, fh)
            logger.info("best validation loss so far: model saved to %s", best_dir)

    def save_checkpoint() -> None:
        path = os.path.join(cfg.output_dir, "checkpoints", f"{CHECKPOINT_PREFIX}{global_step}")
        accelerator.save_state(path)
        if accelerator.is_main_process:
            with open(os.path.join(path, STATE_FILE), "w") as fh:
                json.dump({"global_step": global_step, "history": history}, fh)
            plot_loss_curves(os.path.join(cfg.output_dir, "loss_chart.png"), history)
            if cfg.checkpoints_total_limit is not None:
                for old in _checkpoints(cfg.output_dir)[: -cfg.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
            logger.info("saved checkpoint %s", path)

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
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += accelerator.gather(loss.detach()).mean().item() / cfg.gradient_accumulation_steps
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            history["train_step"].append(global_step)
            history["train_loss"].append(step_loss)
            accelerator.log({"train_loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            step_loss = 0.0
            if global_step % cfg.validation_steps == 0 or global_step == cfg.max_train_steps:
                validate()
            if global_step % cfg.checkpointing_steps == 0 or global_step == cfg.max_train_steps:
                save_checkpoint()
            if global_step >= cfg.max_train_steps:
                break
    progress.close()

    accelerator.wait_for_everyone()
    model_dir = os.path.join(cfg.output_dir, "syncnet")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(model_dir, safe_serialization=True)
        with open(os.path.join(cfg.output_dir, "history.json"), "w") as fh:
            json.dump(history, fh)
        plot_loss_curves(os.path.join(cfg.output_dir, "loss_chart.png"), history)
        if cfg.push_to_hub:
            unwrapped.push_to_hub(cfg.hub_model_id)
    accelerator.end_training()
    # let a later call in the same process (tests, notebooks) choose another precision/accumulation setting; the
    # process group (PartialState) stays
    from accelerate.state import AcceleratorState

    if hasattr(AcceleratorState, "_reset_state"):
        AcceleratorState._reset_state(reset_partial_state=False)
    best = None
    if cfg.save_best_model and os.path.isfile(os.path.join(best_dir, BEST_FILE)):
        with open(os.path.join(best_dir, BEST_FILE)) as fh:
            best = {**json.load(fh), "model_dir": best_dir}
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
