"""Loading the models U-Net training needs, each by Hub id or local folder through its own library.

Every loader here also accepts a folder written by ``save_pretrained`` of a tiny random model of the same class,
which is how the tests exercise the real loading code offline.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn
from transformers import WhisperFeatureExtractor, WhisperModel

from .._deprecation import moved_attribute
from ..errors import ModelNotFoundError
from ..loaders.official import OFFICIAL_UNET_FILE, find_official_file, load_official_unet, load_syncnet, read_config
from ..model_source import check_not_training_run, loading
from ..models.audio_encoder import WhisperAudioEncoder
from ..models.unet import LatentSyncUNet
from ..models.vgg import VGG16Features
from ..schedulers import official_scheduler
from .config import TrainingConfigError, UNetTrainingConfig
from .losses import LPIPSLoss, SyncLoss, TREPALoss

logger = logging.getLogger(__name__)

__all__ = ["TrainingComponents", "build_unet", "check_start_not_a_run", "load_components", "load_lpips",
           "load_pipeline_components", "load_syncnet", "load_unet_weights", "load_whisper_encoder", "model_sources"]


@dataclass
class TrainingComponents:
    """The trainable U-Net and the frozen models around it (loss modules are None when their weight is 0)."""

    unet: LatentSyncUNet
    vae: AutoencoderKL
    audio_encoder: WhisperAudioEncoder
    feature_extractor: WhisperFeatureExtractor
    scheduler: DDIMScheduler
    sync_loss: SyncLoss | None = None
    lpips: LPIPSLoss | None = None
    trepa: TREPALoss | None = None


def load_whisper_encoder(source: str, subfolder: str | None = None) -> WhisperAudioEncoder:
    """Whisper encoder from a [`WhisperAudioEncoder`] folder or from a full Whisper checkpoint (e.g.
    ``openai/whisper-tiny``, whose decoder is dropped)."""
    config = read_config(source, subfolder, "config.json") or {}
    kwargs = {"subfolder": subfolder} if subfolder else {}  # transformers fails on subfolder=None
    if "WhisperAudioEncoder" in (config.get("architectures") or []):
        return WhisperAudioEncoder.from_pretrained(source, **kwargs)
    full = WhisperModel.from_pretrained(source, **kwargs)
    encoder = WhisperAudioEncoder(full.config)
    encoder.load_state_dict(full.get_encoder().state_dict())
    return encoder


def load_unet_weights(unet: LatentSyncUNet, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Load ``state`` into ``unet`` leniently and say what happened.

    Tensors whose shape differs (an SD-1.5 4-channel ``conv_in``, 768-dim ``attn2.to_k/to_v``) and keys the model
    lacks are skipped; model tensors the state lacks keep their init. A skipped ``conv_in`` is zeroed (official
    init) and temporal layers absent from ``state`` get a zero ``proj_out``, so they start as the identity.
    """
    own = unet.state_dict()
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = {
        "loaded": len(kept),
        "shape_mismatch": sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape),
        "unexpected": sorted(k for k in state if k not in own),
        "missing": sorted(k for k in own if k not in state),
    }
    unet.load_state_dict(kept, strict=False)
    not_loaded = set(report["missing"]) | set(report["shape_mismatch"])
    with torch.no_grad():
        if "conv_in.weight" in not_loaded:
            unet.conv_in.weight.zero_()
            unet.conv_in.bias.zero_()
        for name, module in unet.named_modules():
            if isinstance(module, AnimateDiffTransformer3D) and f"{name}.proj_out.weight" in not_loaded:
                nn.init.zeros_(module.proj_out.weight)
                nn.init.zeros_(module.proj_out.bias)
    logger.info(
        "U-Net init from %s: %d tensors loaded, %d new (shape differs), %d ignored, %d not in source",
        source, report["loaded"], len(report["shape_mismatch"]), len(report["unexpected"]), len(report["missing"]),
    )
    return report


def _load_source_unet(source: str) -> LatentSyncUNet:
    """A LatentSyncUNet from a unet folder/id, a pipeline folder/id (``unet/``), or an official
    ``latentsync_unet.pt`` (file, folder or Hub repo holding it)."""
    if read_config(source, None, "config.json") is not None and not source.endswith(".pt"):
        return LatentSyncUNet.from_pretrained(source)
    if read_config(source, "unet", "config.json") is not None:
        return LatentSyncUNet.from_pretrained(source, subfolder="unet")
    path = find_official_file(source, OFFICIAL_UNET_FILE)
    if path is None:
        raise FileNotFoundError(f"no LatentSync U-Net (config.json, unet/ or {OFFICIAL_UNET_FILE}) at {source}")
    return load_official_unet(path)


def build_unet(cfg: UNetTrainingConfig) -> LatentSyncUNet:
    """The U-Net to train, with ``cfg.motion_modules`` placement and weights from the configured starting point."""
    start = cfg.pretrained_unet or (cfg.components_from if not cfg.sd_unet else None)
    if start:
        source_unet = _load_source_unet(start)
        config = {k: v for k, v in source_unet.config.items() if not k.startswith("_")}
        config.update(cfg.unet_config or {})
        config["motion_modules"] = cfg.motion_modules
        unet = LatentSyncUNet.from_config(config)
        load_unet_weights(unet, source_unet.state_dict(), start)
        return unet
    unet = LatentSyncUNet(**{**(cfg.unet_config or {}), "motion_modules": cfg.motion_modules})
    with torch.no_grad():  # official init: conv_in zero, temporal layers identity
        unet.conv_in.weight.zero_()
        unet.conv_in.bias.zero_()
        for module in unet.modules():
            if isinstance(module, AnimateDiffTransformer3D):
                nn.init.zeros_(module.proj_out.weight)
                nn.init.zeros_(module.proj_out.bias)
    if cfg.sd_unet:
        has_root = read_config(cfg.sd_unet, None, "config.json") is not None
        sd = UNet2DConditionModel.from_pretrained(cfg.sd_unet, subfolder=None if has_root else "unet")
        load_unet_weights(unet, sd.state_dict(), cfg.sd_unet)
    return unet


def load_lpips(backbone: str, heads: str | None) -> LPIPSLoss:
    """LPIPS on a VGG-16 trunk: a folder saved by [`VGG16Features`], else ImageNet weights (id or file)."""
    if os.path.isdir(backbone) and os.path.isfile(os.path.join(backbone, "config.json")):
        net = VGG16Features.from_pretrained(backbone)
    else:
        net = VGG16Features.from_vgg16_weights(backbone)
    return LPIPSLoss(net, heads)


def model_sources(cfg: UNetTrainingConfig) -> dict[str, str | None]:
    """Setting -> model source (folder, file or Hub id) of every model that [`load_components`] will load for
    ``cfg`` (settings it will not use are left out), for checking them before anything loads."""
    sources: dict[str, str | None] = {}
    if cfg.components_from:
        sources["components_from"] = cfg.components_from
    else:
        sources.update(vae=cfg.vae, whisper=cfg.whisper)
    if cfg.pretrained_unet:
        sources["pretrained_unet"] = cfg.pretrained_unet
    elif cfg.sd_unet:
        sources["sd_unet"] = cfg.sd_unet
    if cfg.stage == 2:
        if cfg.sync_loss_weight > 0:
            sources["syncnet"] = cfg.syncnet
        if cfg.perceptual_loss_weight > 0:
            sources["lpips_backbone"] = cfg.lpips_backbone
            if cfg.lpips_heads not in (None, "uniform"):
                sources["lpips_heads"] = cfg.lpips_heads
        if cfg.trepa_loss_weight > 0:
            sources["trepa_model"] = cfg.trepa_model
    return sources


def check_start_not_a_run(sources: dict[str, str | None]) -> None:
    """Refuse, before anything loads, a training run's output folder given as the pipeline or U-Net a run starts
    from (``components_from``, ``pretrained_unet``, ``sd_unet`` of [`model_sources`]): the settings file at its top
    would be read as a model config and the run end in a missing-weights error. One line naming the setting and
    where the run's models are (its ``pipeline/``, a checkpoint to export, or a SyncNet run's SyncNet).

    Raises:
        ModelNotFoundError: a local folder of those settings holds a training run and no pipeline.
    """
    for setting in ("components_from", "pretrained_unet", "sd_unet"):
        if sources.get(setting) is not None:
            try:
                check_not_training_run(sources[setting])
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(f"{setting}: {exc}") from None


def unet_start(cfg: UNetTrainingConfig) -> tuple[str, str | None]:
    """Where the trained U-Net's weights start: ``(setting, source)``; source None for a fresh random init."""
    if cfg.pretrained_unet:
        return "pretrained_unet", cfg.pretrained_unet
    if cfg.sd_unet:
        return "sd_unet", cfg.sd_unet
    if cfg.components_from:
        return "components_from", cfg.components_from
    return "unet_config", None


def load_pipeline_components(cfg: UNetTrainingConfig) -> dict[str, Any]:
    """The frozen components the saved pipeline is made of: ``vae``, ``audio_encoder``, ``feature_extractor`` and
    ``scheduler`` (from ``components_from``, else ``vae`` / ``whisper`` and the official scheduler)."""
    if cfg.components_from:
        src = cfg.components_from
        with loading("components_from", src):
            return dict(
                vae=AutoencoderKL.from_pretrained(src, subfolder="vae"),
                audio_encoder=WhisperAudioEncoder.from_pretrained(src, subfolder="audio_encoder"),
                feature_extractor=WhisperFeatureExtractor.from_pretrained(src, subfolder="feature_extractor"),
                scheduler=DDIMScheduler.from_pretrained(src, subfolder="scheduler"),
            )
    with loading("vae", cfg.vae):
        vae = AutoencoderKL.from_pretrained(cfg.vae)
    with loading("whisper", cfg.whisper):
        audio_encoder = load_whisper_encoder(cfg.whisper)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(cfg.whisper)
    return dict(vae=vae, audio_encoder=audio_encoder, feature_extractor=feature_extractor,
                scheduler=official_scheduler())


def load_components(cfg: UNetTrainingConfig) -> TrainingComponents:
    """Load (or build) every model of ``cfg``."""
    parts = load_pipeline_components(cfg)
    vae, audio_encoder = parts["vae"], parts["audio_encoder"]
    with loading(*unet_start(cfg)):
        unet = build_unet(cfg)
    if unet.config.cross_attention_dim != audio_encoder.config.d_model:
        raise TrainingConfigError(
            f"U-Net cross_attention_dim {unet.config.cross_attention_dim} does not match the audio encoder width "
            f"{audio_encoder.config.d_model}: the U-Net and the audio encoder come from different models"
        )
    comps = TrainingComponents(unet, vae, audio_encoder, parts["feature_extractor"], parts["scheduler"])
    if cfg.stage == 2:
        if cfg.sync_loss_weight > 0:
            with loading("syncnet", cfg.syncnet):
                comps.sync_loss = SyncLoss(load_syncnet(cfg.syncnet, cfg.syncnet_subfolder))
        if cfg.perceptual_loss_weight > 0:
            with loading("lpips_backbone", cfg.lpips_backbone):
                comps.lpips = load_lpips(cfg.lpips_backbone, cfg.lpips_heads)
        if cfg.trepa_loss_weight > 0:
            with loading("trepa_model", cfg.trepa_model):
                comps.trepa = TREPALoss.from_pretrained(cfg.trepa_model)
    for frozen in (vae, audio_encoder):
        frozen.requires_grad_(False).eval()
    return comps


def __getattr__(name: str) -> Any:
    """Names that lived here before the re-layout keep working for one release, with a deprecation warning."""
    return moved_attribute(__name__, name)
