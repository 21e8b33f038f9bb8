"""Settings of the two trainers: dataclasses read from YAML, with ``key=value`` command-line overrides.

[`TrainingConfig`] holds what both trainers share (data source, optimiser, precision, checkpoints, logging, Hub);
[`UNetTrainingConfig`] and [`SyncNetTrainingConfig`] extend it with their models and method.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from ..errors import LatentSyncInputError

MIXED_PRECISIONS = ("no", "fp16", "bf16")
# what goes to the Hub during training, as transformers' hub_strategy: the final model only, or also every checkpoint
# (only the newest kept in the repo, or all of them)
HUB_STRATEGIES = ("end", "checkpoint", "all_checkpoints")
# diffusers' LR schedules that these settings describe (its piecewise_constant needs step rules, which they do not hold)
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
# values of path settings that are keywords, not paths
PATH_KEYWORDS = {"lpips_heads": "uniform"}

# The value of a U-Net setting that follows the training stage (see [`UNetTrainingConfig`]).
STAGE_DEFAULT = "stage"
STAGE_DEFAULTS: dict[int, dict[str, Any]] = {
    1: {"motion_modules": "none", "trainable_modules": None},
    2: {"motion_modules": "all", "trainable_modules": ["motion_modules.", "attentions."]},
}


class TrainingConfigError(LatentSyncInputError):
    """The training settings cannot be read or contradict each other (the message names the setting)."""


@dataclass
class TrainingConfig:
    """The settings both trainers share.

    Data: ``train_data`` is a folder of aligned 25 fps clips with 16 kHz audio, a video file, or a ``datasets``
    dataset (saved folder, parquet folder or Hub id) with mp4 bytes in ``video_column``; ``cache_clips`` decoded
    clips stay in memory. Optimisation: AdamW with a diffusers LR schedule, gradient accumulation and clipping,
    mixed precision through accelerate (fp16 needs a GPU: on a CPU the run falls back to fp32). Bookkeeping:
    checkpoints (accelerate states, written atomically) every ``checkpointing_steps`` in
    ``output_dir/checkpoints``, the newest ``checkpoints_total_limit`` kept; ``resume_from_checkpoint`` is a
    checkpoint folder or ``latest``; one loss line per step in ``output_dir/losses.jsonl`` and every
    ``logging_steps`` in the log, ``history.json`` and ``loss_chart.png`` at each checkpoint and at the end; trackers
    with ``report_to`` (TensorBoard: ``output_dir/logging_dir``). A new run into a non-empty ``output_dir`` is
    refused unless it resumes (``resume_from_checkpoint``) or ``overwrite_output_dir`` is set (which deletes the old
    run first). Hub: with ``push_to_hub`` the result goes to ``hub_model_id`` (``hub_private`` when created);
    ``hub_strategy`` ``checkpoint`` also uploads every checkpoint as it is saved (the repo keeps the newest,
    ``checkpoints/checkpoint-<step>``), ``all_checkpoints`` keeps them all; ``resume_from_checkpoint=hub`` resumes
    from the newest checkpoint in ``hub_model_id`` (downloaded into ``output_dir/checkpoints``). A resumed run keeps
    the learning-rate schedule its checkpoint was saved with: resuming with other ``SCHEDULE_SETTINGS`` that change
    the learning rate of the steps still to train is refused unless ``change_lr_schedule`` is set, which continues
    with the new schedule from the checkpoint's step.
    """

    # data
    train_data: str | None = None
    train_split: str = "train"
    video_column: str = "video"
    dataloader_num_workers: int = 2
    cache_clips: int = 0
    # optimisation
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    change_lr_schedule: bool = False
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 10_000_000
    mixed_precision: str = "fp16"
    gradient_checkpointing: bool = True
    allow_tf32: bool = True
    seed: int = 1247
    # bookkeeping
    output_dir: str = "outputs/unet"
    overwrite_output_dir: bool = False
    logging_dir: str = "logs"
    logging_steps: int = 10
    report_to: str | None = "tensorboard"
    checkpointing_steps: int = 10_000
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_steps: int = 10_000
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False
    hub_strategy: str = "end"

    # settings that shape the state a checkpoint holds: resuming with other values is refused (base.check_resume_point)
    RESUME_SETTINGS: ClassVar[tuple[str, ...]] = ()
    # the command that trains with these settings (named when a config of the other trainer is given)
    SCRIPT: ClassVar[str] = ""
    # settings whose value a resumed run takes from the checkpoint's optimiser state (a change is only warned about)
    SAVED_SETTINGS: ClassVar[tuple[str, ...]] = ("adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon")
    # settings that shape the learning-rate schedule: a resumed run whose schedule they change is refused unless
    # change_lr_schedule is set (base.check_lr_schedule)
    SCHEDULE_SETTINGS: ClassVar[tuple[str, ...]] = ("learning_rate", "lr_scheduler", "lr_warmup_steps",
                                                    "max_train_steps")
    # settings that name a local file or folder (or a Hub id): a run's config.yaml holds the local ones as absolute
    # paths (with_absolute_paths), so that it is read the same from any working directory
    PATH_SETTINGS: ClassVar[tuple[str, ...]] = ("train_data", "output_dir")

    def check_train_data_set(self) -> None:
        """Raise [`TrainingConfigError`] when ``train_data`` is not set: the first thing a run needs (checked before
        the settings that depend on the method)."""
        if not self.train_data:
            raise TrainingConfigError("train_data is not set: pass train_data=DATA (a folder of aligned clips, a "
                                      "`latentsync prepare` output, or a datasets path/id), usually with "
                                      "--config train/configs/<name>.yaml")

    def validate(self) -> None:
        """Raise [`TrainingConfigError`] (a ``ValueError``) naming the first missing or contradictory setting."""
        self.check_train_data_set()
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise TrainingConfigError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise TrainingConfigError(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got "
                                      f"{self.lr_scheduler!r}")
        if self.lr_warmup_steps < 0:
            raise TrainingConfigError(f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if self.hub_strategy not in HUB_STRATEGIES:
            raise TrainingConfigError(f"hub_strategy must be one of {', '.join(HUB_STRATEGIES)}, "
                                      f"got {self.hub_strategy!r}")
        if self.hub_strategy != "end" and not self.push_to_hub:
            raise TrainingConfigError(f"hub_strategy={self.hub_strategy} needs push_to_hub=true")
        if (self.push_to_hub or self.resume_from_checkpoint == "hub") and not self.hub_model_id:
            raise TrainingConfigError("push_to_hub and resume_from_checkpoint=hub need hub_model_id")
        for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "validation_steps",
                     "checkpointing_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise TrainingConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.report_to is not None:
            # deferred, as the models below: accelerate imports torch (seconds); the settings are read without it
            tracking = importlib.import_module("accelerate.tracking")
            choices = importlib.import_module("accelerate.utils").LoggerType.list()
            if self.report_to not in choices:
                raise TrainingConfigError(f"report_to must be one of {', '.join(choices)} or null (no tracker), got "
                                          f"{self.report_to!r}")
            installed = {tracker.value for tracker in tracking.get_available_trackers()}
            if self.report_to != "all" and self.report_to not in installed:
                raise TrainingConfigError(
                    f"report_to={self.report_to} needs the {self.report_to} package, which is not installed: install "
                    f"it (pip install {self.report_to.replace('_', '-')}) or set report_to=null (installed trackers: "
                    f"{', '.join(sorted(installed)) or 'none'})")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise TrainingConfigError(f"checkpoints_total_limit must be >= 1 (or null: keep every checkpoint), got "
                                      f"{self.checkpoints_total_limit}")
        if self.resume_from_checkpoint and self.overwrite_output_dir:
            raise TrainingConfigError(
                "resume_from_checkpoint and overwrite_output_dir=true contradict each other (one continues the run "
                "in output_dir, the other deletes it): set only one")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def effective_learning_rate(self, num_processes: int) -> float:
        """The peak learning rate the optimiser gets with ``num_processes`` processes (``learning_rate``)."""
        return self.learning_rate

    def with_absolute_paths(self, root: str | os.PathLike | None = None) -> TrainingConfig:
        """A copy whose ``PATH_SETTINGS`` that name an existing local file or folder relative to ``root`` (default:
        the working directory) hold its absolute path (``~`` expanded); Hub ids, paths that do not exist there and
        the settings' keywords (``lpips_heads=uniform``) stay as they are."""
        root = os.fspath(root) if root is not None else os.getcwd()
        changes = {}
        for name in self.PATH_SETTINGS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value or PATH_KEYWORDS.get(name) == value:
                continue
            path = os.path.expanduser(value)
            if os.path.isabs(path):
                changes[name] = path
            elif os.path.exists(os.path.join(root, path)):
                changes[name] = os.path.abspath(os.path.join(root, path))
        return dataclasses.replace(self, **changes)


@dataclass
class UNetTrainingConfig(TrainingConfig):
    """Every setting of ``train/train_unet.py``. Defaults are the official stage-2 values.

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
    estimate (each active when its weight is > 0). ``motion_modules`` places the temporal layers (``all``,
    ``decoder``, ``none``) and ``trainable_modules`` lists name substrings of the U-Net parameters to train (None:
    all); both follow the stage unless set (``"stage"``, the default: stage 1 = no temporal layers and every weight
    trains, stage 2 = temporal layers everywhere and ``motion_modules.`` + ``attentions.`` train). Setting ``stage``
    in a config file or on the command line also resets these two to the stage's choice unless the same file or
    command line sets them. With ``lora_rank`` > 0 the U-Net is frozen and LoRA adapters (peft) are added on
    ``lora_target_modules`` inside the modules ``trainable_modules`` selects; the adapter is saved in diffusers' LoRA
    format in ``output_dir/lora`` (``pipe.load_lora_weights``) with a record of its base model, and is what
    ``push_to_hub`` uploads, the merged pipeline going to ``hub_merged_model_id`` when set. ``scale_lr`` multiplies
    the learning rate by the effective batch size. Validation lip-syncs ``validation_seconds`` of
    ``validation_video`` to ``validation_audio`` every ``validation_steps``.
    """

    # models
    components_from: str | None = None
    pretrained_unet: str | None = None
    sd_unet: str | None = None
    unet_config: dict[str, Any] | None = None
    motion_modules: str = STAGE_DEFAULT
    vae: str = "stabilityai/sd-vae-ft-mse"
    whisper: str = "openai/whisper-tiny"
    syncnet: str | None = None
    syncnet_subfolder: str | None = None
    lpips_backbone: str = "timm/vgg16.tv_in1k"
    lpips_heads: str | None = None
    trepa_model: str = "MCG-NJU/videomae-base-finetuned-ssv2"
    # data
    resolution: int = 256
    num_frames: int = 16
    # method
    stage: int = 2
    use_mixed_noise: bool = True
    mixed_noise_alpha: float = 1.0
    recon_loss_weight: float = 1.0
    sync_loss_weight: float = 0.05
    perceptual_loss_weight: float = 0.1
    trepa_loss_weight: float = 10.0
    trainable_modules: list[str] | str | None = STAGE_DEFAULT
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    hub_merged_model_id: str | None = None
    # optimisation
    scale_lr: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    # validation
    validation_video: str | None = None
    validation_audio: str | None = None
    validation_seconds: float = 4.0
    validation_inference_steps: int = 20
    validation_guidance_scale: float = 1.5

    # settings that follow ``stage`` unless set beside it (see load_settings)
    IMPLIED_SETTINGS = {"stage": {"motion_modules": STAGE_DEFAULT, "trainable_modules": STAGE_DEFAULT}}
    SCRIPT: ClassVar[str] = "train/train_unet.py"
    RESUME_SETTINGS: ClassVar[tuple[str, ...]] = ("unet_config", "motion_modules", "trainable_modules", "lora_rank",
                                                  "lora_alpha", "lora_target_modules", "use_ema")
    SAVED_SETTINGS: ClassVar[tuple[str, ...]] = (*TrainingConfig.SAVED_SETTINGS, "ema_decay")
    SCHEDULE_SETTINGS: ClassVar[tuple[str, ...]] = (*TrainingConfig.SCHEDULE_SETTINGS, "scale_lr")
    PATH_SETTINGS: ClassVar[tuple[str, ...]] = (*TrainingConfig.PATH_SETTINGS, "components_from", "pretrained_unet",
                                                "sd_unet", "vae", "whisper", "syncnet", "lpips_backbone",
                                                "lpips_heads", "trepa_model", "validation_video", "validation_audio")

    def __post_init__(self) -> None:
        for key, value in STAGE_DEFAULTS.get(self.stage, {}).items():
            if getattr(self, key) == STAGE_DEFAULT:
                setattr(self, key, copy.deepcopy(value))

    def effective_learning_rate(self, num_processes: int) -> float:
        """The peak learning rate: ``learning_rate``, times the global batch (processes x batch x accumulation) with
        ``scale_lr``."""
        if not self.scale_lr:
            return self.learning_rate
        return self.learning_rate * self.gradient_accumulation_steps * self.train_batch_size * num_processes

    @property
    def pixel_space_supervise(self) -> bool:
        return self.stage == 2 and (
            self.sync_loss_weight > 0 or self.perceptual_loss_weight > 0 or self.trepa_loss_weight > 0
        )

    @property
    def active_losses(self) -> dict[str, float]:
        """Loss name -> weight of the losses this run computes."""
        losses = {"recon": self.recon_loss_weight}
        if self.stage == 2:
            for name, weight in (("sync", self.sync_loss_weight), ("lpips", self.perceptual_loss_weight),
                                 ("trepa", self.trepa_loss_weight)):
                if weight > 0:
                    losses[name] = weight
        return losses

    def validate(self) -> None:
        """Raise [`TrainingConfigError`] (a ``ValueError``) naming the first missing or contradictory setting."""
        self.check_train_data_set()
        if self.stage not in (1, 2):
            raise TrainingConfigError(f"stage must be 1 or 2, got {self.stage}")
        if self.motion_modules not in ("all", "decoder", "none"):
            raise TrainingConfigError(f"motion_modules must be all, decoder or none, got {self.motion_modules!r}")
        if isinstance(self.trainable_modules, str) or (
                self.trainable_modules is not None and not all(isinstance(p, str) for p in self.trainable_modules)):
            raise TrainingConfigError("trainable_modules must be a list of parameter-name parts or null (all), "
                                      f"got {self.trainable_modules!r}")
        if self.resolution % 8:
            raise TrainingConfigError(f"resolution must be a multiple of 8, got {self.resolution}")
        # deferred: the U-Net imports torch and diffusers (seconds); reading the settings does not need them
        _check_model_arguments("unet_config", self.unet_config,
                               importlib.import_module("latentsync.models.unet").LatentSyncUNet)
        if self.stage == 2 and self.sync_loss_weight > 0 and not self.syncnet:
            raise TrainingConfigError("sync_loss_weight > 0 needs a SyncNet: set syncnet=<id or folder>")
        if (self.motion_modules == "none" and self.trainable_modules
                and all("motion_modules" in p for p in self.trainable_modules)):
            raise TrainingConfigError(
                f"trainable_modules={self.trainable_modules} selects only temporal layers, but motion_modules=none "
                "builds the U-Net without them: set motion_modules=all (or decoder) or other trainable_modules")
        if self.lora_rank < 0:
            raise TrainingConfigError(f"lora_rank must be >= 0, got {self.lora_rank}")
        super().validate()
        if (self.validation_video is None) != (self.validation_audio is None):
            raise TrainingConfigError("set both validation_video and validation_audio, or neither")


@dataclass
class SyncNetTrainingConfig(TrainingConfig):
    """Every setting of ``train/train_syncnet.py``. Defaults follow the official ``syncnet_16_pixel_attn.yaml``.

    Model:
        model_preset: official architecture (``16_pixel_attn``, ``16_pixel``, ``16_latent``, ``25_pixel``) or None.
        model_config: StableSyncNet arguments applied on top of the preset (all of them when the preset is None).
        pretrained_model: start from these weights (``from_pretrained`` folder/Hub id, or official
            ``stable_syncnet.pt``); its architecture then wins over preset/model_config.
        vae / vae_subfolder: SD VAE for latent-space SyncNets.
    Data (see [`SyncNetDataset`]): without ``val_data`` the validation pairs come from the training clips,
        restricted to ``val_time_range`` (use disjoint time ranges to validate on held-out seconds).
        ``num_frames``, resolution and lower-half cropping come from the model config.
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
    val_data: str | None = None
    val_split: str = "validation"
    train_time_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    val_time_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    positive_ratio: float = 0.5
    min_negative_offset: int = 1
    max_negative_offset: int | None = None
    hflip: bool = False
    preload_clips: bool = False
    # validation
    num_val_samples: int = 2048
    val_batch_size: int = 40
    save_best_model: bool = True
    progress: bool = True
    # shared settings with other defaults than the U-Net's
    cache_clips: int = 16
    train_batch_size: int = 256
    max_train_steps: int = 1_000_000
    gradient_checkpointing: bool = False
    seed: int = 42
    output_dir: str = "outputs/syncnet"
    report_to: str | None = None
    checkpointing_steps: int = 2500
    validation_steps: int = 2500

    SCRIPT: ClassVar[str] = "train/train_syncnet.py"
    RESUME_SETTINGS: ClassVar[tuple[str, ...]] = ("model_preset", "model_config")
    PATH_SETTINGS: ClassVar[tuple[str, ...]] = (*TrainingConfig.PATH_SETTINGS, "pretrained_model", "vae", "val_data")

    def validate(self) -> None:
        """Raise [`TrainingConfigError`] (a ``ValueError``) naming the first missing or contradictory setting."""
        super().validate()
        for name in ("train_time_range", "val_time_range"):
            r = getattr(self, name)
            if len(r) != 2 or not 0 <= r[0] < r[1] <= 1:
                raise TrainingConfigError(
                    f"{name} must be [start, end] fractions with 0 <= start < end <= 1, got {r}")
        for name in ("num_val_samples", "val_batch_size"):
            if getattr(self, name) < 1:
                raise TrainingConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model_preset is None and not self.model_config and not self.pretrained_model:
            raise TrainingConfigError("set model_preset, model_config or pretrained_model")
        syncnet = importlib.import_module("latentsync.models.syncnet")  # deferred: imports torch (see above)
        if self.model_preset is not None and self.model_preset not in syncnet.SYNCNET_CONFIGS:
            raise TrainingConfigError(
                f"unknown model_preset {self.model_preset!r}; choose one of "
                f"{', '.join(syncnet.SYNCNET_CONFIGS)} or null")
        _check_model_arguments("model_config", self.model_config, syncnet.StableSyncNet)


def _check_model_arguments(setting: str, arguments: dict[str, Any] | None, model: type) -> None:
    """Raise [`TrainingConfigError`] when ``arguments`` (a mapping setting such as ``model_config``) holds a name the
    constructor of ``model`` does not take (a misspelt key would otherwise end the run in a traceback)."""
    if arguments is None:
        return
    if not isinstance(arguments, dict):
        raise TrainingConfigError(f"{setting} must be a mapping of {model.__name__} arguments, got {arguments!r}")
    known = set(inspect.signature(model.__init__).parameters) - {"self"}
    unknown = sorted(set(arguments) - known)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise TrainingConfigError(f"{setting}: {', '.join(unknown)} is no {model.__name__} argument"
                                  + (f" (did you mean {near[0]}?)" if near else "")
                                  + f"; its arguments: {', '.join(sorted(known))}")


def load_settings(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Any:
    """Build the settings dataclass ``cls`` from a YAML file and ``key=value`` overrides.

    The YAML may name a ``base:`` YAML (relative to itself) to inherit from. Override values are parsed as YAML
    (numbers, booleans, null, lists); ``field.key=value`` sets one entry of a mapping field (``model_config``).
    Numbers that YAML 1.1 reads as strings (``1e-4``) are converted for numeric fields. Each layer (base file,
    file, command line) that sets a key of ``cls.IMPLIED_SETTINGS`` (the U-Net's ``stage``) also resets the settings
    it implies, unless it sets them too. A file that cannot be read, bad YAML and unknown keys raise
    [`TrainingConfigError`] naming the file or key.
    """
    implied = getattr(cls, "IMPLIED_SETTINGS", {})
    data: dict[str, Any] = _read_yaml(os.fspath(path), implied) if path is not None else {}
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    layer: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise TrainingConfigError(f"override must look like key=value, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        try:
            parsed = yaml.safe_load(value) if value else None
        except yaml.YAMLError as exc:
            raise TrainingConfigError(f"cannot parse the value of {key}: {_yaml_problem(exc)}") from None
        if isinstance(parsed, (bool, int, float)) and "str" in _type_options(fields.get(key, "")):
            parsed = value  # a text setting takes the text as typed: mixed_precision=no, hub_model_id=2024
        if "." in key:
            outer, inner = key.split(".", 1)
            current = layer.get(outer) or data.get(outer) or {}
            if not isinstance(current, dict) or (
                    outer in fields and not any(o.startswith("dict") for o in _type_options(fields[outer]))):
                raise TrainingConfigError(f"{key}={value}: {outer} is no mapping (KEY.NAME=VALUE sets one entry of a "
                                          f"mapping setting such as model_config): set it whole, {outer}=VALUE")
            layer[outer] = dict(current)
            layer[outer][inner] = parsed
        else:
            layer[key] = parsed
    data.update(_with_implied(layer, implied))
    _check_keys(cls, data, path)
    return cls(**{key: _typed(key, value, fields[key]) for key, value in data.items()})


def _check_keys(cls: type, data: dict[str, Any], path: str | os.PathLike | None) -> None:
    """Raise [`TrainingConfigError`] for keys of ``data`` (the file at ``path`` read, the command line applied) that
    ``cls`` does not have: a config file of the other trainer is named as such, with the script that takes it;
    keys of the other trainer are said to be; a lone misspelt key comes with the setting it probably meant."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if not unknown:
        return
    other = SyncNetTrainingConfig if cls is UNetTrainingConfig else UNetTrainingConfig
    theirs = {f.name for f in dataclasses.fields(other)}
    if path is not None and set(_read_yaml(os.fspath(path), {})) <= theirs and set(unknown) <= theirs:
        raise TrainingConfigError(
            f"config {os.fspath(path)} is for {other.SCRIPT}, not {cls.SCRIPT or cls.__name__} (its keys "
            f"{', '.join(unknown[:4])}{', ...' if len(unknown) > 4 else ''} are {other.__name__} settings): run "
            f"{other.SCRIPT} with it")
    if set(unknown) <= theirs:
        hint = f" (settings of {other.SCRIPT}, not of {cls.SCRIPT or cls.__name__})"
    else:
        near = difflib.get_close_matches(unknown[0], sorted(known), n=1) if len(unknown) == 1 else []
        hint = f" (did you mean {near[0]}?)" if near else ""
    raise TrainingConfigError(f"unknown config keys: {', '.join(unknown)}{hint} (see {cls.__name__} for the "
                              "settings)")


def _type_options(annotation: str) -> set[str]:
    """The types a setting's annotation allows: ``"list[str] | str | None"`` -> ``{"list[str]", "str", "None"}``."""
    return {part.strip() for part in annotation.split("|") if part.strip()}


TYPE_NAMES = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text",
              "list[str]": "a list of text ([a, b])", "list[float]": "a list of numbers ([a, b])",
              "dict[str, Any]": "a mapping ({key: value})", "None": "null"}


def _typed(key: str, value: Any, annotation: str) -> Any:
    """``value`` as the type of setting ``key`` (its ``annotation``): numbers that YAML 1.1 reads as text (``1e-4``)
    and whole floats of an int setting (``1.0e+3``) converted; anything else of another type raises
    [`TrainingConfigError`] naming the setting, instead of a traceback (or a silently wrong run) later."""
    options = _type_options(annotation)

    def number(v: Any, kind: str) -> int | float | None:
        """``v`` as ``kind`` ("int" or "float"), None when it is not one."""
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        if kind == "float":
            return float(v)
        return int(v) if float(v).is_integer() else None

    if value is None and "None" in options:
        return None
    if isinstance(value, bool) and "bool" in options:
        return value
    for kind in ("int", "float"):
        if kind in options and (converted := number(value, kind)) is not None:
            return converted
    if isinstance(value, str) and "str" in options:
        return value
    if isinstance(value, dict) and any(o.startswith("dict") for o in options):
        return value
    if isinstance(value, list):
        if "list[str]" in options and all(isinstance(v, str) for v in value):
            return value
        if "list[float]" in options and all((number(v, "float") is not None and not isinstance(v, str))
                                            for v in value):
            return [float(v) for v in value]
    expected = " or ".join(TYPE_NAMES.get(o, o) for o in sorted(options, key=lambda o: o == "None"))
    hint = ""
    if isinstance(value, bool) and "str" in options:
        hint = " (YAML reads an unquoted yes/no/on/off as true/false: put the text in quotes)"
    elif isinstance(value, str) and any(o.startswith("list") for o in options):
        hint = f" (a list is written [{value}])"
    shown = "null" if value is None else repr(value)
    raise TrainingConfigError(f"{key} must be {expected}, got {shown}{hint}")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> UNetTrainingConfig:
    """U-Net training settings from a YAML file and ``key=value`` overrides (see [`load_settings`])."""
    return load_settings(UNetTrainingConfig, path, overrides)


def load_syncnet_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> SyncNetTrainingConfig:
    """SyncNet training settings from a YAML file and ``key=value`` overrides (``model_config.key=value`` sets one
    model argument; see [`load_settings`])."""
    return load_settings(SyncNetTrainingConfig, path, overrides)


def _with_implied(layer: dict[str, Any], implied: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``layer`` plus the settings implied by the keys it sets (those it does not set itself)."""
    out = dict(layer)
    for key, settings in implied.items():
        if key in layer:
            for name, value in settings.items():
                out.setdefault(name, value)
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what YAML found wrong and where."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}{where}"


def _read_yaml(path: str, implied: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise TrainingConfigError(f"config file not found: {path}")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise TrainingConfigError(f"cannot read config {path}: {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingConfigError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise TrainingConfigError(f"config {path} must hold a mapping of settings (key: value lines)")
    base = data.pop("base", None)
    data = _with_implied(data, implied)
    if base:
        merged = _read_yaml(os.path.join(os.path.dirname(path), base), implied)
        merged.update(data)
        data = merged
    return data
