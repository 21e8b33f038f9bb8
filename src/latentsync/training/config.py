"""Configuration of U-Net training: a dataclass read from YAML, with ``key=value`` command-line overrides."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass
class UNetTrainingConfig:
    """Every setting of ``train/train_unet.py``. Defaults are the official stage-2 values (spec section 7).

    Models (each loads by Hub id or local folder through its library, so tiny random models plug in for tests):
        components_from: a saved [`LatentSyncPipeline`] (id or folder); its vae, audio_encoder, feature_extractor
            and scheduler are used, and its unet is the starting point unless ``pretrained_unet``/``sd_unet`` is set.
        pretrained_unet: LatentSyncUNet weights to start from (folder/id of a unet, or of a pipeline with ``unet/``);
            loaded leniently: missing temporal layers stay at their identity init (stage 2 from a stage-1 model).
        sd_unet: SD-1.5-shaped ``UNet2DConditionModel`` (id/folder, ``subfolder="unet"``) to initialise stage 1;
            the 13-channel ``conv_in`` and the 384-dim audio ``attn2.to_k/to_v`` stay newly initialised.
        unet_config: LatentSyncUNet constructor arguments for a fresh model (None: the official full-size U-Net).
        vae, whisper: used when ``components_from`` is not set (SD VAE and Whisper-tiny by default).
        syncnet: StableSyncNet id/folder (needed when ``sync_loss_weight`` > 0).
        lpips_backbone: VGG-16 weights (Hub id in timm layout, folder saved by [`VGG16Features`], or file).
        lpips_heads: LPIPS linear heads file; None = the heads shipped in torchmetrics; "uniform" = equal weights.
        trepa_model: VideoMAE id/folder for TREPA.

    Method: ``stage`` 1 trains with the noise MSE only; stage 2 adds the pixel-space losses on the one-step x0
    estimate (each active when its weight is > 0). ``trainable_modules`` lists name substrings of the U-Net
    parameters to train (None: all). With ``lora_rank`` > 0 the U-Net is frozen and LoRA adapters (peft) are added on
    ``lora_target_modules`` inside the modules ``trainable_modules`` selects.
    """

    # models
    components_from: str | None = None
    pretrained_unet: str | None = None
    sd_unet: str | None = None
    unet_config: dict[str, Any] | None = None
    motion_modules: str = "all"
    vae: str = "stabilityai/sd-vae-ft-mse"
    whisper: str = "openai/whisper-tiny"
    syncnet: str | None = None
    syncnet_subfolder: str | None = None
    lpips_backbone: str = "timm/vgg16.tv_in1k"
    lpips_heads: str | None = None
    trepa_model: str = "MCG-NJU/videomae-base-finetuned-ssv2"
    # data
    train_data: str | None = None
    train_split: str = "train"
    video_column: str = "video"
    resolution: int = 256
    num_frames: int = 16
    dataloader_num_workers: int = 2
    cache_clips: int = 0
    # method
    stage: int = 2
    use_mixed_noise: bool = True
    mixed_noise_alpha: float = 1.0
    recon_loss_weight: float = 1.0
    sync_loss_weight: float = 0.05
    perceptual_loss_weight: float = 0.1
    trepa_loss_weight: float = 10.0
    trainable_modules: list[str] | None = field(default_factory=lambda: ["motion_modules.", "attentions."])
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # optimisation
    learning_rate: float = 1e-5
    scale_lr: bool = False
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 10_000_000
    mixed_precision: str = "fp16"
    gradient_checkpointing: bool = True
    allow_tf32: bool = True
    use_ema: bool = False
    ema_decay: float = 0.9999
    seed: int = 1247
    # bookkeeping
    output_dir: str = "outputs/unet"
    logging_dir: str = "logs"
    report_to: str | None = "tensorboard"
    checkpointing_steps: int = 10_000
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_steps: int = 10_000
    validation_video: str | None = None
    validation_audio: str | None = None
    validation_seconds: float = 4.0
    validation_inference_steps: int = 20
    validation_guidance_scale: float = 1.5
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False

    @property
    def pixel_space_supervise(self) -> bool:
        return self.stage == 2 and (
            self.sync_loss_weight > 0 or self.perceptual_loss_weight > 0 or self.trepa_loss_weight > 0
        )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent setting."""
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.motion_modules not in ("all", "decoder", "none"):
            raise ValueError(f"motion_modules must be all, decoder or none, got {self.motion_modules!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {self.resolution}")
        if self.stage == 2 and self.sync_loss_weight > 0 and not self.syncnet:
            raise ValueError("sync_loss_weight > 0 needs a SyncNet: set syncnet=<id or folder>")
        if not self.train_data:
            raise ValueError("train_data is not set (folder of aligned mp4 clips, or a datasets path/id)")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id")
        if (self.validation_video is None) != (self.validation_audio is None):
            raise ValueError("set both validation_video and validation_audio, or neither")


def load_settings(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Any:
    """Build the settings dataclass ``cls`` from a YAML file and ``key=value`` overrides.

    The YAML may name a ``base:`` YAML (relative to itself) to inherit from. Override values are parsed as YAML
    (numbers, booleans, null, lists); ``field.key=value`` sets one entry of a mapping field (``model_config``).
    Numbers that YAML 1.1 reads as strings (``1e-4``) are converted for numeric fields. Unknown keys raise
    ``ValueError``.
    """
    data: dict[str, Any] = _read_yaml(os.fspath(path)) if path is not None else {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override must look like key=value, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        parsed = yaml.safe_load(value) if value else None
        if "." in key:
            outer, inner = key.split(".", 1)
            data[outer] = dict(data.get(outer) or {})
            data[outer][inner] = parsed
        else:
            data[key] = parsed
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(unknown)}")
    for key, value in data.items():
        kind = fields[key].replace("| None", "").strip()
        if isinstance(value, str) and kind in ("float", "int"):
            try:  # YAML 1.1 reads "3e-5" as a string
                data[key] = float(value) if kind == "float" else int(value)
            except ValueError:
                raise ValueError(f"{key} must be a number, got {value!r}") from None
    return cls(**data)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> UNetTrainingConfig:
    """U-Net training settings from a YAML file and ``key=value`` overrides (see [`load_settings`])."""
    return load_settings(UNetTrainingConfig, path, overrides)


def _read_yaml(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of settings")
    base = data.pop("base", None)
    if base:
        merged = _read_yaml(os.path.join(os.path.dirname(path), base))
        merged.update(data)
        data = merged
    return data
