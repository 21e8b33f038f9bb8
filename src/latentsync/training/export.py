"""Turn a checkpoint of a training run into what the run saves at its end, without touching the run.

A U-Net run's checkpoint becomes a loadable [`LatentSyncPipeline`] folder (EMA weights when the run kept an EMA,
a LoRA adapter saved to ``OUTPUT/lora`` with the record of its base and fused into the pipeline's weights, exactly
as the run's own ``pipeline/`` and ``lora/``); a SyncNet run's checkpoint becomes a ``StableSyncNet`` folder. The
run folder is only read. Command line: ``latentsync export-checkpoint RUN_DIR [--step N] OUTPUT``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import torch
import yaml
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from ..errors import LatentSyncInputError
from ..model_source import check_model_sources, is_syncnet_run
from ..models.syncnet import StableSyncNet
from ..models.unet import LatentSyncUNet
from ..tempfiles import check_output_folder, write_folder_atomically
from ..utils import read_json
from . import base
from .components import TrainingComponents, build_unet, load_pipeline_components, model_sources
from .config import SyncNetTrainingConfig, UNetTrainingConfig
from .syncnet_trainer import build_syncnet
from .unet_trainer import add_lora, save_pipeline, select_trainable

logger = logging.getLogger(__name__)

MODEL_WEIGHTS = "model.safetensors"  # the trained model in an accelerate checkpoint
EMA_STATE = "custom_checkpoint_0.pkl"  # the EMA, the first object registered for checkpointing


class ExportError(LatentSyncInputError):
    """A run folder, checkpoint or output folder cannot be used for an export."""


def find_checkpoint(run_dir: str, step: int | None = None) -> str:
    """The checkpoint folder of ``run_dir`` at ``step`` (None: the newest)."""
    if not os.path.isdir(run_dir):
        raise ExportError(f"run folder not found: {run_dir}")
    found = base.list_checkpoints(run_dir)
    if not found:
        raise ExportError(f"{run_dir} holds no checkpoint ({base.checkpoint_root(run_dir)}/checkpoint-<step>)")
    if step is None:
        return found[-1]
    by_step = {base.checkpoint_step(path): path for path in found}
    if step not in by_step:
        raise ExportError(f"{run_dir} has no checkpoint of step {step}; its checkpoints are at steps "
                          f"{', '.join(map(str, sorted(by_step)))}")
    return by_step[step]


def _read_settings(cls: type, run_dir: str) -> Any:
    """The saved settings of the run in ``run_dir`` as ``cls`` (keys of later versions are ignored with a note), with
    local paths absolute: runs of earlier versions saved them as given, relative to the folder the run was started
    in, which is found from the run folder's path and its saved ``output_dir`` (see [`base.run_start_folder`]; the
    working directory when it cannot be)."""
    path = base.settings_file(run_dir)
    with open(path) as fh:
        data = yaml.safe_load(fh) if path.endswith((".yaml", ".yml")) else json.load(fh)
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(data) - known):
        logger.info("settings not known to this version, ignored: %s", ", ".join(unknown))
    cfg = cls(**{k: v for k, v in data.items() if k in known})
    return cfg.with_absolute_paths(base.run_start_folder(run_dir, cfg.output_dir))


def _model_state(checkpoint: str) -> dict[str, torch.Tensor]:
    """The trained model's weights in a checkpoint, with the prefixes of distributed or compiled models removed."""
    path = os.path.join(checkpoint, MODEL_WEIGHTS)
    if not os.path.isfile(path):
        raise ExportError(f"{checkpoint} holds no model weights ({MODEL_WEIGHTS})")
    state = load_file(path)
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _model_config(checkpoint: str) -> dict[str, Any] | None:
    return read_json(os.path.join(checkpoint, base.MODEL_CONFIG_FILE))


def export_unet_checkpoint(run_dir: str, checkpoint: str, output: str, use_ema: bool | None = None) -> dict[str, Any]:
    """Export a U-Net run's checkpoint as a pipeline folder (see the module docstring)."""
    cfg = _read_settings(UNetTrainingConfig, run_dir)
    check_model_sources({k: v for k, v in model_sources(cfg).items()
                         if k in ("components_from", "vae", "whisper")})
    config = _model_config(checkpoint)
    unet = LatentSyncUNet.from_config(config) if config is not None else build_unet(cfg)
    if cfg.lora_rank > 0:
        add_lora(unet, cfg)
    else:
        select_trainable(unet, cfg.trainable_modules)
    unet.load_state_dict(_model_state(checkpoint), strict=True)
    ema_path = os.path.join(checkpoint, EMA_STATE)
    use_ema = cfg.use_ema if use_ema is None else use_ema
    if use_ema:
        if not (cfg.use_ema and os.path.isfile(ema_path)):
            raise ExportError(f"{checkpoint} holds no EMA weights (the run had use_ema={cfg.use_ema})")
        params = [p for p in unet.parameters() if p.requires_grad]
        ema = EMAModel(params, decay=cfg.ema_decay)
        ema.load_state_dict(torch.load(ema_path, map_location="cpu", weights_only=True))
        ema.copy_to(params)
    parts = load_pipeline_components(cfg)
    comps = TrainingComponents(unet=unet, **parts)
    step = base.checkpoint_step(checkpoint)
    lora_dir = os.path.join(output, "lora") if cfg.lora_rank > 0 else None
    save_pipeline(unet, comps, cfg, output, lora_dir, step)
    return {"kind": "unet", "step": step, "checkpoint": checkpoint, "pipeline": output, "lora": lora_dir,
            "ema": bool(use_ema)}


def export_syncnet_checkpoint(run_dir: str, checkpoint: str, output: str) -> dict[str, Any]:
    """Export a SyncNet run's checkpoint as a ``StableSyncNet`` folder."""
    config = _model_config(checkpoint)
    if config is not None:
        model = StableSyncNet.from_config(config)
    else:
        model = build_syncnet(_read_settings(SyncNetTrainingConfig, run_dir))
    model.load_state_dict(_model_state(checkpoint), strict=True)
    model.save_pretrained(output, safe_serialization=True)
    return {"kind": "syncnet", "step": base.checkpoint_step(checkpoint), "checkpoint": checkpoint, "model": output}


def export_checkpoint(run_dir: str, output: str, step: int | None = None, use_ema: bool | None = None,
                      overwrite: bool = False) -> dict[str, Any]:
    """Export the checkpoint of ``run_dir`` at ``step`` (None: the newest) to ``output``: a pipeline folder for a
    U-Net run (plus ``output/lora`` for a LoRA run; EMA weights when the run kept an EMA, unless ``use_ema`` is
    False), a ``StableSyncNet`` folder for a SyncNet run. ``run_dir`` is only read. Returns what was written."""
    checkpoint = find_checkpoint(run_dir, step)
    if base.settings_file(run_dir) is None:
        raise ExportError(f"{run_dir} is not a training run folder (no {base.SETTINGS_FILE} or, from earlier versions, "
                          f"{base.LEGACY_SETTINGS_FILE})")
    is_unet = not is_syncnet_run(run_dir)
    if use_ema and not is_unet:
        raise ExportError("SyncNet runs keep no EMA weights")
    check_output_folder(output, [run_dir], overwrite, "export", ExportError)  # the run is only read

    def write(partial: str) -> dict[str, Any]:
        if is_unet:
            result = export_unet_checkpoint(run_dir, checkpoint, partial, use_ema)
        else:
            result = export_syncnet_checkpoint(run_dir, checkpoint, partial)
        return {k: v.replace(partial, output) if isinstance(v, str) else v for k, v in result.items()}

    # written beside the output and renamed when complete: a failed export leaves nothing
    result = write_folder_atomically(output, write)
    logger.info("exported %s (step %d) to %s", checkpoint, result["step"], output)
    return result
