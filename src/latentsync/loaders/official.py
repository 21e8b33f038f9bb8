"""Load and convert the official LatentSync release checkpoints (U-Net, Whisper, StableSyncNet).

The official releases (``ByteDance/LatentSync``, ``ByteDance/LatentSync-1.5``, ``ByteDance/LatentSync-1.6`` on the
Hub) ship PyTorch pickles in the layout of the official code base:

* ``latentsync_unet.pt``: ``{"global_step", "state_dict"}`` of the AnimateDiff-style ``UNet3DConditionModel``.
  Three layouts exist: ``stage1`` (no temporal layers; also v1.0, whose audio cross-attention is named
  ``audio_cross_attn.*``), ``stage2`` (temporal layers in every down and up block) and ``stage2_efficient``
  (temporal layers in the up blocks only).
* ``whisper/tiny.pt``: an OpenAI Whisper checkpoint (``{"dims", "model_state_dict"}``).
* ``stable_syncnet.pt``: ``{"state_dict", ...}`` of the StableSyncNet used as a training loss.
* the VAE is ``stabilityai/sd-vae-ft-mse`` (diffusers format already) with scaling factor 0.18215.

This module maps them onto [`LatentSyncUNet`], [`WhisperAudioEncoder`] and [`StableSyncNet`] strictly: every key must
land on a parameter of the same shape, and every parameter must be covered, otherwise a
[`OfficialCheckpointError`] names the offending keys. Official checkpoints are read with
``torch.load(weights_only=True)``. It builds models and components only; ``LatentSyncPipeline.from_pretrained``
assembles them into a pipeline (whose ``save_pretrained`` then writes safetensors).

``LatentSyncUNet(frame_pooled_norm=True)`` (the default) reproduces the official normalisation exactly: ResNet
GroupNorms and ``conv_norm_out`` pool statistics over all frames of a clip, temporal-module GroupNorms are per frame.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file as load_safetensors
from transformers import WhisperConfig, WhisperFeatureExtractor

from ..errors import LatentSyncInputError, first_line
from ..model_source import (
    OFFICIAL_SYNCNET_FILE,
    OFFICIAL_UNET_FILE,
    OFFICIAL_VAE_ID,
    OFFICIAL_WHISPER_FILE,
    loading,
    syncnet_folder_problem,
)
from ..models.audio_encoder import WhisperAudioEncoder
from ..models.syncnet import SYNCNET_CONFIGS, StableSyncNet
from ..models.unet import LatentSyncUNet
from ..schedulers import official_scheduler

logger = logging.getLogger(__name__)

OFFICIAL_VAE_SCALING_FACTOR = 0.18215

# Aligned-face resolution of each official release (v1.6 was trained on 512 x 512 faces).
OFFICIAL_RESOLUTIONS = {
    "ByteDance/LatentSync": 256,
    "ByteDance/LatentSync-1.5": 256,
    "ByteDance/LatentSync-1.6": 512,
}
DEFAULT_OFFICIAL_RESOLUTION = 256

# openai-whisper vocabulary sizes: the English-only models (tiny.en, base.en, ...) have one token fewer than the
# multilingual ones (51865). Every LatentSync release conditions on the multilingual Whisper tiny.
WHISPER_ENGLISH_ONLY_VOCAB = 51864

# Official U-Net settings that the weights cannot reveal: the official config's attention_head_dim 8 is used as the
# number of heads, GroupNorm has 32 groups everywhere, temporal attention has 8 heads.
OFFICIAL_UNET_DEFAULTS = dict(
    sample_size=64,
    norm_num_groups=32,
    norm_eps=1e-5,
    num_attention_heads=8,
    motion_num_attention_heads=8,
    motion_max_seq_length=24,
    frame_pooled_norm=True,
)

UNetLayout = Literal["stage1", "stage2", "stage2_efficient"]
_MOTION_OF_LAYOUT = {"stage1": "none", "stage2": "all", "stage2_efficient": "decoder"}

# Renames inside one official motion module (after ``motion_modules.N.temporal_transformer.``), as in diffusers'
# AnimateDiff conversion script.
_MOTION_RENAMES = (
    ("attention_blocks.0.", "attn1."),
    ("attention_blocks.1.", "attn2."),
    ("norms.0.", "norm1."),
    ("norms.1.", "norm2."),
    ("ff_norm.", "norm3."),
)
# v1.0 (code up to 5289c62) named the audio cross-attention of every spatial transformer block differently.
_V10_RENAMES = (("audio_cross_attn.norm.", "norm2."), ("audio_cross_attn.attn.", "attn2."))
_MOTION_KEY = re.compile(r"^((?:down|up)_blocks\.\d+\.motion_modules\.\d+\.)(.*)$")
_PE_KEY = re.compile(r"^(.*\.transformer_blocks\.\d+\.)attention_blocks\.(\d+)\.pos_encoder\.pe$")


class OfficialCheckpointError(LatentSyncInputError):
    """An official checkpoint is missing, unreadable, or does not match the expected layout."""


@dataclass(frozen=True)
class OfficialUNetLayout:
    """What the keys of an official U-Net state dict reveal.

    Args:
        layout: ``"stage1"`` (no temporal layers), ``"stage2"`` (all blocks) or ``"stage2_efficient"`` (decoder).
        v1_0_names: the audio cross-attention uses the v1.0 names ``audio_cross_attn.*``.
    """

    layout: UNetLayout
    v1_0_names: bool

    @property
    def motion_modules(self) -> str:
        return _MOTION_OF_LAYOUT[self.layout]


# ---------------------------------------------------------------------------------------------------- reading


_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_ZIP_END = b"PK\x05\x06"  # end-of-central-directory record: the last bytes of a complete zip (torch.save) file


def _not_a_checkpoint(path: str) -> str | None:
    """What the file at ``path`` holds instead of a readable checkpoint (an empty file, a Git LFS pointer, an HTML
    page, a truncated zip), or None when its first and last bytes look fine."""
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes): download it again"
    with open(path, "rb") as fh:
        head = fh.read(512)
        fh.seek(max(0, size - 65_558))  # the end record and its longest comment
        tail = fh.read()
    if head.startswith(_LFS_POINTER):
        return (f"is a Git LFS pointer ({size}-byte text file), not the weights: the repository was cloned without "
                "git-lfs; run `git lfs pull` in it, or download the file itself (e.g. `hf download`)")
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html", b"<?xml")):
        return (f"is a web page ({size} bytes), not a checkpoint: the download saved an error or login page; "
                "download it again")
    if head.startswith(b"PK\x03\x04") and _ZIP_END not in tail:
        return (f"is incomplete ({size} bytes, the end of the file is missing): an interrupted download? "
                "download it again")
    return None


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _load_error(path: str, exc: Exception) -> OfficialCheckpointError:
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # torch's advice (weights_only=False) is not what a user should do here
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0].splitlines()[0]
        if (m := re.search(r"GLOBAL (\S+) was not an allowed global", detail)) is not None:
            detail = f"a pickled {m.group(1)}"
        return OfficialCheckpointError(
            f"cannot read checkpoint {path}: it holds more than tensors ({detail}), and checkpoints are read with "
            "torch.load(weights_only=True), which runs no pickled code; a whole model saved with torch.save(model) "
            "is such a file: save its weights instead, torch.save({'state_dict': model.state_dict()}, path)")
    return OfficialCheckpointError(f"cannot read checkpoint {path}: {first_line(exc)}")


def load_official_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read an official ``.pt`` checkpoint safely (``weights_only=True``, memory-mapped when possible); a
    ``.safetensors`` file is read as a state dict.

    Raises:
        OfficialCheckpointError: one line naming the file and what it holds instead (missing, empty, a Git LFS
            pointer, a web page, truncated, or not readable with ``weights_only=True``).
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise OfficialCheckpointError(f"checkpoint file not found: {path}")
    if (problem := _not_a_checkpoint(path)) is not None:
        raise OfficialCheckpointError(f"cannot read checkpoint {path}: it {problem}")
    if _is_safetensors(path):
        try:
            return load_safetensors(path)
        except Exception as exc:
            raise OfficialCheckpointError(f"cannot read checkpoint {path}: {first_line(exc)}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # legacy (non-zip) files cannot be memory-mapped
            raise _load_error(path, exc) from exc
    except Exception as exc:
        raise _load_error(path, exc) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _load_error(path, exc) from exc


def _describe_checkpoint(checkpoint: Any) -> str | None:
    """What a loaded checkpoint holds, in words (a Whisper checkpoint, a StableSyncNet, LoRA weights, a U-Net), for
    error messages; None when it is none of those."""
    if not isinstance(checkpoint, dict):
        return None
    if "dims" in checkpoint and "model_state_dict" in checkpoint:
        return "an openai-whisper checkpoint (like whisper/tiny.pt)"
    sd = _inner_state_dict(checkpoint)
    keys = [k for k in _unwrapped(sd) if isinstance(k, str)] if isinstance(sd, dict) else []
    if any("lora" in k.lower() for k in keys):
        return "LoRA / adapter weights"
    if any(k.startswith("visual_encoder.") for k in keys) and any(k.startswith("audio_encoder.") for k in keys):
        return "a StableSyncNet (like stable_syncnet.pt)"
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        return "a U-Net (like latentsync_unet.pt)"
    if any(k.startswith("encoder.blocks.") for k in keys):
        return "Whisper weights without their 'dims'"
    return None


def _holds(checkpoint: Any) -> str:
    what = _describe_checkpoint(checkpoint)
    return f"it holds {what}" if what else (
        f"top-level keys: {sorted(map(str, checkpoint))[:8]}" if isinstance(checkpoint, dict)
        else f"it holds a {type(checkpoint).__name__}")


# Where checkpoints keep their state dict: the official files use "state_dict"; other trainers "model" or "module".
_STATE_DICT_WRAPPERS = ("state_dict", "model", "module")


def _inner_state_dict(checkpoint: dict[str, Any]) -> Any:
    """The state dict inside a checkpoint (under one of ``_STATE_DICT_WRAPPERS``), or the checkpoint itself."""
    for wrapper in _STATE_DICT_WRAPPERS:
        if isinstance(checkpoint.get(wrapper), dict):
            return checkpoint[wrapper]
    return checkpoint


# Key prefixes of wrapped models: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrapped(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` without the prefixes that DDP or ``torch.compile`` put on every key."""
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _unet_state_dict(checkpoint: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The U-Net tensors of an official checkpoint (``{"state_dict": ...}``, or a bare state dict as in v1.0)."""
    if not isinstance(checkpoint, dict):
        raise OfficialCheckpointError(f"{source}: expected a dict, got {type(checkpoint).__name__}")
    sd = _inner_state_dict(checkpoint)
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise OfficialCheckpointError(f"{source}: no U-Net state dict found ({_holds(checkpoint)})")
    return _unwrapped(sd)


def _format_keys(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


_REDUCIBLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """The keys of the floating-point tensors in ``state_dict`` that hold a NaN or an infinity, in order.

    One ``aminmax`` per tensor (NaN and infinities reach the minimum or maximum): no copy of the weights is made;
    0.5 to 1 s for 300 M float16 values on two shared CPU cores, about what one dtype cast of them costs. Meta
    tensors are skipped.
    """
    bad = []
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.is_meta:
            continue
        if tensor.numel() == 0:
            continue
        low, high = torch.aminmax(tensor if tensor.dtype in _REDUCIBLE else tensor.float())
        if not (torch.isfinite(low) and torch.isfinite(high)):
            bad.append(key)
    return bad


def _nonfinite_problem(state_dict: dict[str, Any], keys: list[str]) -> str:
    first = state_dict[keys[0]]
    count = int((~torch.isfinite(first)).sum())
    tensors = f"{len(keys)} tensors hold" if len(keys) > 1 else "1 tensor holds"
    return f"{tensors} NaN or infinite values (first: {keys[0]}, {count} of {first.numel()} values)"


def check_finite(state_dict: dict[str, Any], name: str, unused: Any = None) -> None:
    """Raise [`OfficialCheckpointError`] when a tensor of ``state_dict`` that the model uses holds NaN or infinite
    values (a damaged file or a diverged training run: such weights give black or garbage frames); the keys for
    which ``unused(key)`` is true (e.g. Whisper's text decoder) are only warned about."""
    bad = nonfinite_tensors(state_dict)
    if not bad:
        return
    used = [k for k in bad if unused is None or not unused(k)]
    if used:
        raise OfficialCheckpointError(
            f"{name}: {_nonfinite_problem(state_dict, used)}: the file is damaged (download it again) or comes from "
            "a training run that diverged (use an earlier checkpoint); it would give black or garbage frames")
    logger.warning("%s: %s, in weights LatentSync does not use: ignored, but the file may be damaged", name,
                   _nonfinite_problem(state_dict, bad))


# ---------------------------------------------------------------------------------------------------- U-Net


def detect_unet_layout(state_dict: dict[str, torch.Tensor]) -> OfficialUNetLayout:
    """Tell the official U-Net layout (stage1 / stage2 / stage2_efficient, v1.0 names) from its keys."""
    if "conv_in.weight" not in state_dict or not any(k.startswith("down_blocks.") for k in state_dict):
        raise OfficialCheckpointError(
            "not an official LatentSync U-Net state dict (no conv_in.weight / down_blocks.*); "
            f"first keys: {_format_keys(list(state_dict)[:5])}"
        )
    down = any(".motion_modules." in k for k in state_dict if k.startswith("down_blocks."))
    up = any(".motion_modules." in k for k in state_dict if k.startswith("up_blocks."))
    if down and not up:
        raise OfficialCheckpointError("temporal layers only in the down blocks: not an official LatentSync layout")
    layout: UNetLayout = "stage2" if down else ("stage2_efficient" if up else "stage1")
    return OfficialUNetLayout(layout=layout, v1_0_names=any(".audio_cross_attn." in k for k in state_dict))


def _block_indices(state_dict: dict[str, torch.Tensor], prefix: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state_dict if (m := re.match(rf"^{prefix}\.(\d+)\.", k))})


def official_unet_config(state_dict: dict[str, torch.Tensor], **overrides: Any) -> dict[str, Any]:
    """[`LatentSyncUNet`] config for an official state dict: sizes read from the tensors, the rest official.

    ``overrides`` replace any value (e.g. ``norm_num_groups`` for a scaled-down model).
    """
    info = detect_unet_layout(state_dict)
    sd = state_dict
    down = _block_indices(sd, "down_blocks")
    up = _block_indices(sd, "up_blocks")
    if down != list(range(len(down))) or len(up) != len(down):
        raise OfficialCheckpointError(f"unexpected block indices: down {down}, up {up}")
    try:
        channels = tuple(int(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in down)
    except KeyError as exc:
        raise OfficialCheckpointError(f"missing ResNet weights in the U-Net state dict: {exc}") from None
    layers = len(_block_indices(sd, r"down_blocks\.0\.resnets"))
    cross = [
        v.shape[1] for k, v in sd.items()
        if k.endswith(("attn2.to_k.weight", "audio_cross_attn.attn.to_k.weight")) and ".motion_modules." not in k
    ]
    pe = [v.shape[1] for k, v in sd.items() if k.endswith("pos_encoder.pe")]
    config = dict(OFFICIAL_UNET_DEFAULTS)
    config.update(
        in_channels=int(sd["conv_in.weight"].shape[1]),
        out_channels=int(sd["conv_out.weight"].shape[0]) if "conv_out.weight" in sd else 4,
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=tuple(
            "CrossAttnDownBlockMotion" if any(k.startswith(f"down_blocks.{i}.attentions.") for k in sd)
            else "DownBlockMotion" for i in down
        ),
        up_block_types=tuple(
            "CrossAttnUpBlockMotion" if any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)
            else "UpBlockMotion" for i in up
        ),
        cross_attention_dim=int(cross[0]) if cross else 384,
        motion_modules=info.motion_modules,
    )
    if pe:
        config["motion_max_seq_length"] = int(pe[0])
    config.update(overrides)
    return config


def _rename_motion_tail(tail: str) -> str:
    if tail.startswith("temporal_transformer."):
        tail = tail[len("temporal_transformer.") :]
    for old, new in _MOTION_RENAMES:
        tail = re.sub(rf"(^|\.){re.escape(old)}", lambda m: m.group(1) + new, tail)
    return tail


def rename_unet_key(key: str) -> str:
    """Our name for one official U-Net key (``pos_encoder.pe`` tables are handled by [`convert_unet_state_dict`])."""
    for old, new in _V10_RENAMES:
        key = key.replace(old, new)
    m = _MOTION_KEY.match(key)
    return key if m is None else m.group(1) + _rename_motion_tail(m.group(2))


def convert_unet_state_dict(
    state_dict: dict[str, torch.Tensor], motion_max_seq_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Rename an official U-Net state dict to [`LatentSyncUNet`] names.

    Motion modules: ``.temporal_transformer`` is removed, ``attention_blocks.{0,1}`` become ``attn{1,2}``,
    ``norms.{0,1}`` become ``norm{1,2}`` and ``ff_norm`` becomes ``norm3``. The official model stores one
    sinusoidal table per temporal attention (``attention_blocks.{0,1}.pos_encoder.pe``); diffusers shares one
    (``pos_embed.pe``) between both. Both tables are checked against the sinusoid diffusers computes and against each
    other, and the checkpoint's table is kept. v1.0 ``audio_cross_attn.{norm,attn}`` become ``norm2`` / ``attn2``.
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    pe_tables: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        pe = _PE_KEY.match(key)
        if pe is not None and ".motion_modules." in key:
            pe_tables.setdefault(pe.group(1), []).append((key, value))
            continue
        new = rename_unet_key(key)
        if new in out:
            raise OfficialCheckpointError(f"keys {origin[new]!r} and {key!r} both map to {new!r}")
        out[new] = value
        origin[new] = key
    for block, tables in pe_tables.items():
        first_key, first = tables[0]
        if first.ndim != 3 or first.shape[0] != 1:
            raise OfficialCheckpointError(
                f"{first_key}: expected shape (1, length, channels), got {tuple(first.shape)}"
            )
        length = motion_max_seq_length or first.shape[1]
        channels = first.shape[2]
        for key, table in tables:
            if tuple(table.shape) != (1, length, channels):
                raise OfficialCheckpointError(
                    f"{key}: positional table shape {tuple(table.shape)} != (1, {length}, {channels})"
                )
            if table.is_meta:
                continue
            # diffusers applies one table before each temporal attention: it must be the standard sinusoid
            tol = 1e-5 if table.dtype in (torch.float32, torch.float64) else 1e-2
            standard = SinusoidalPositionalEmbedding(channels, length).pe.double()
            err = (table.detach().cpu().double() - standard).abs().max().item()
            if err > tol:
                raise OfficialCheckpointError(
                    f"{key}: positional table differs from the standard sinusoid (max |diff| {err:.3g})"
                )
            if not torch.equal(table, first):
                raise OfficialCheckpointError(f"{key} differs from {first_key}: the two tables of a block must match")
        # keep the checkpoint's own table (bit-identical to what the official model adds)
        out[rename_unet_key(block) + "pos_embed.pe"] = first
    return out


def check_state_dict(
    converted: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str, renamed_from: dict | None = None
) -> None:
    """Raise [`OfficialCheckpointError`] naming missing keys, unexpected keys and shape mismatches."""
    missing = set(expected) - set(converted)
    unexpected = set(converted) - set(expected)
    shapes = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(converted))
        if tuple(converted[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if missing:
        problems.append(f"missing keys (in our model, not in the checkpoint): {_format_keys(missing)}")
    if unexpected:
        names = {renamed_from.get(k, k) for k in unexpected} if renamed_from else unexpected
        problems.append(f"unexpected keys (in the checkpoint, not in our model): {_format_keys(names)}")
    if shapes:
        more = f" ({len(shapes)} in all)" if len(shapes) > 12 else ""
        problems.append(f"shape mismatches: {'; '.join(shapes[:12])}{more}")
    raise OfficialCheckpointError(f"{what} does not match: " + " | ".join(problems))


def _original_names(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """Map converted names back to the checkpoint's names (for error messages)."""
    return {rename_unet_key(key): key for key in state_dict if not _PE_KEY.match(key)}


def _assign_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    model.load_state_dict(state_dict, strict=True, assign=True)
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    left = [n for n, t in tensors if t.is_meta and n not in state_dict]
    if left:
        raise OfficialCheckpointError(f"{what}: tensors not covered by the checkpoint: {_format_keys(left)}")


def _cast(model: torch.nn.Module, torch_dtype: torch.dtype | None, name: str) -> None:
    """Cast assigned checkpoint tensors to ``torch_dtype`` (default float32), only where needed.

    Raises:
        OfficialCheckpointError: a weight of ``name`` (finite, as checked on loading) is beyond float16's range
            (65504) and would be infinite in the float16 model, which gives black frames.
    """
    dtype = torch_dtype or torch.float32
    tensors = list(model.parameters()) + list(model.buffers())
    if any(t.is_floating_point() and t.dtype != dtype and not t.is_meta for t in tensors):
        model.to(dtype)
        if dtype == torch.float16:  # the weights were finite before the cast: an infinity now is an overflow
            state = model.state_dict()
            bad = nonfinite_tensors(state)
            if bad:
                raise OfficialCheckpointError(
                    f"{name}: {len(bad)} tensor(s) hold weights beyond float16's range (65504; first: {bad[0]}), "
                    "which become infinite in float16 and give black frames: load it in bfloat16 or float32")


def load_official_unet(
    source: str | os.PathLike | dict[str, torch.Tensor],
    torch_dtype: torch.dtype | None = None,
    **config_overrides: Any,
) -> LatentSyncUNet:
    """Build a [`LatentSyncUNet`] from an official ``latentsync_unet.pt`` (path or loaded dict), strictly.

    The layout (stage1 / stage2 / stage2_efficient, v1.0 names) and the sizes are read from the keys; the model is
    created on the meta device and the checkpoint tensors are assigned, so no second copy of the weights is made.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "U-Net state dict"
    checkpoint = load_official_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    official = _unet_state_dict(checkpoint, name)
    try:
        info = detect_unet_layout(official)
    except OfficialCheckpointError as exc:
        what = _describe_checkpoint(checkpoint)
        problem = f"it holds {what}, not a LatentSync U-Net" if what else str(exc)
        raise OfficialCheckpointError(f"{name}: {problem}") from None
    config = official_unet_config(official, **config_overrides)
    check_finite(official, name)  # (before the positional tables are compared with the sinusoid)
    converted = convert_unet_state_dict(official, motion_max_seq_length=config["motion_max_seq_length"])
    with torch.device("meta"):
        unet = LatentSyncUNet(**config)
    check_state_dict(converted, unet.state_dict(), f"official U-Net ({info.layout}) {name}",
                     renamed_from=_original_names(official))
    _assign_state_dict(unet, converted, name)
    if "global_step" in checkpoint:
        logger.info("loaded %s: %s layout, global_step %s", name, info.layout, checkpoint["global_step"])
    _cast(unet, torch_dtype, name)
    return unet.eval()


# ---------------------------------------------------------------------------------------------------- Whisper

# openai-whisper encoder names -> transformers WhisperEncoder names (per layer after ``encoder.blocks.N.``)
_WHISPER_LAYER_MAP = {
    "attn.query.": "self_attn.q_proj.",
    "attn.key.": "self_attn.k_proj.",
    "attn.value.": "self_attn.v_proj.",
    "attn.out.": "self_attn.out_proj.",
    "attn_ln.": "self_attn_layer_norm.",
    "mlp.0.": "fc1.",
    "mlp.2.": "fc2.",
    "mlp_ln.": "final_layer_norm.",
}
_WHISPER_TOP_MAP = {
    "encoder.conv1.": "conv1.",
    "encoder.conv2.": "conv2.",
    "encoder.ln_post.": "layer_norm.",
}


def whisper_config_from_dims(dims: dict[str, int]) -> WhisperConfig:
    """transformers [`WhisperConfig`] for an openai-whisper ``dims`` dict (``n_mels``, ``n_audio_state``, ...)."""
    try:
        return WhisperConfig(
            num_mel_bins=dims["n_mels"],
            max_source_positions=dims["n_audio_ctx"],
            d_model=dims["n_audio_state"],
            encoder_attention_heads=dims["n_audio_head"],
            encoder_layers=dims["n_audio_layer"],
            encoder_ffn_dim=4 * dims["n_audio_state"],
            vocab_size=dims.get("n_vocab", 51865),
            max_target_positions=dims.get("n_text_ctx", 448),
            decoder_attention_heads=dims.get("n_text_head", dims["n_audio_head"]),
            decoder_layers=dims.get("n_text_layer", dims["n_audio_layer"]),
            decoder_ffn_dim=4 * dims.get("n_text_state", dims["n_audio_state"]),
        )
    except KeyError as exc:
        raise OfficialCheckpointError(f"Whisper checkpoint dims lack {exc} (got {sorted(dims)})") from None


def convert_whisper_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an openai-whisper ``model_state_dict`` to transformers ``WhisperEncoder`` names (decoder dropped).

    ``encoder.positional_embedding`` -> ``embed_positions.weight``; ``encoder.conv{1,2}`` -> ``conv{1,2}``;
    ``encoder.ln_post`` -> ``layer_norm``; per block ``attn.{query,key,value,out}`` -> ``self_attn.{q,k,v,out}_proj``,
    ``attn_ln`` -> ``self_attn_layer_norm``, ``mlp.0`` / ``mlp.2`` -> ``fc1`` / ``fc2``, ``mlp_ln`` ->
    ``final_layer_norm``. Unknown ``encoder.*`` keys are kept under their own name (strict loading reports them).
    """
    out = {}
    for key, value in state_dict.items():
        if not key.startswith("encoder."):
            continue  # text decoder: unused by LatentSync
        if key == "encoder.positional_embedding":
            new = "embed_positions.weight"
        elif m := re.match(r"^encoder\.blocks\.(\d+)\.(.*)$", key):
            rest = m.group(2)
            new = key
            for old, repl in _WHISPER_LAYER_MAP.items():
                if rest.startswith(old):
                    new = f"layers.{m.group(1)}.{repl}{rest[len(old):]}"
                    break
        else:
            new = key
            for old, repl in _WHISPER_TOP_MAP.items():
                if key.startswith(old):
                    new = repl + key[len(old) :]
                    break
        out[new] = value
    return out


def _unused_whisper_key(key: str) -> bool:
    """Whether LatentSync's audio features ignore this openai-whisper key: the text decoder, and ``ln_post`` (the
    features are the embedding and every layer's output, before the final layer norm)."""
    return not key.startswith("encoder.") or key.startswith("encoder.ln_post.")


def load_official_whisper(
    source: str | os.PathLike | dict[str, Any], torch_dtype: torch.dtype | None = None
) -> WhisperAudioEncoder:
    """Build a [`WhisperAudioEncoder`] from an openai-format Whisper checkpoint (``whisper/tiny.pt``), strictly."""
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "Whisper checkpoint"
    checkpoint = load_official_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise OfficialCheckpointError(f"{name}: not an openai-whisper checkpoint (needs 'dims' and "
                                      f"'model_state_dict'; {_holds(checkpoint)})")
    config = whisper_config_from_dims(checkpoint["dims"])
    converted = convert_whisper_state_dict(checkpoint["model_state_dict"])
    encoder = WhisperAudioEncoder(config).to(torch_dtype or torch.float32)
    check_state_dict(converted, encoder.state_dict(), f"Whisper encoder {name}")
    check_finite(checkpoint["model_state_dict"], name, unused=_unused_whisper_key)
    encoder.load_state_dict(converted, strict=True)  # copies, casting the (fp16 in openai's files) weights
    return encoder.eval()


# ---------------------------------------------------------------------------------------------------- SyncNet


def load_official_syncnet(
    source: str | os.PathLike | dict[str, Any],
    preset: str | None = None,
    torch_dtype: torch.dtype | None = None,
) -> StableSyncNet:
    """Build a [`StableSyncNet`] from an official SyncNet checkpoint (``stable_syncnet.pt``), strictly.

    The official key names are already ours; the architecture is the preset whose keys and shapes match exactly
    (``"16_pixel_attn"`` for the released file), or ``preset`` when given.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "SyncNet checkpoint"
    checkpoint = load_official_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(checkpoint, dict):
        raise OfficialCheckpointError(f"{name}: expected a dict, got {type(checkpoint).__name__}")
    sd = _inner_state_dict(checkpoint)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise OfficialCheckpointError(f"{name}: no SyncNet state dict found ({_holds(checkpoint)})")
    sd = _unwrapped(sd)
    candidates = [preset] if preset is not None else list(SYNCNET_CONFIGS)
    if preset is not None and preset not in SYNCNET_CONFIGS:
        raise ValueError(f"unknown SyncNet preset {preset!r}; choose one of {', '.join(SYNCNET_CONFIGS)}")
    for candidate in candidates:
        with torch.device("meta"):
            model = StableSyncNet.from_preset(candidate)
        expected = model.state_dict()
        if set(expected) == set(sd) and all(tuple(expected[k].shape) == tuple(sd[k].shape) for k in sd):
            break
    else:  # report the differences against the released architecture (or the requested one)
        if (what := _describe_checkpoint(checkpoint)) is not None and "StableSyncNet" not in what:
            raise OfficialCheckpointError(f"{name}: it holds {what}, not a StableSyncNet")
        with torch.device("meta"):
            model = StableSyncNet.from_preset(preset or "16_pixel_attn")
        check_state_dict(sd, model.state_dict(), f"SyncNet {name} (compared with preset {preset or '16_pixel_attn'})")
        candidate = preset or "16_pixel_attn"
    check_finite(sd, name)
    _assign_state_dict(model, sd, name)
    logger.info("loaded %s as StableSyncNet preset %s", name, candidate)
    _cast(model, torch_dtype, name)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- files


@dataclass
class OfficialFiles:
    """Local paths of the official release files."""

    unet: str
    whisper: str
    syncnet: str | None = None


def _is_local(source: str | os.PathLike) -> bool:
    return os.path.isdir(os.fspath(source))


def is_official_layout(
    source: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> bool:
    """Whether ``source`` (folder or Hub id) holds an official release: ``latentsync_unet.pt``, no model_index.json.

    For a Hub id the local cache is asked first; the Hub is asked (file listing) only when the cache cannot tell
    and offline mode is off.
    """
    source = os.fspath(source)
    if _is_local(os.path.expanduser(source)):
        source = os.path.expanduser(source)
        return os.path.isfile(os.path.join(source, OFFICIAL_UNET_FILE)) and not os.path.isfile(
            os.path.join(source, "model_index.json")
        )
    if os.path.exists(source) or source.count("/") != 1:
        return False
    found = {}
    for name in ("model_index.json", OFFICIAL_UNET_FILE):
        try:
            found[name] = isinstance(try_to_load_from_cache(source, name, cache_dir=cache_dir, revision=revision), str)
        except Exception:  # invalid repo id and the like: let diffusers report it
            return False
    if found["model_index.json"]:
        return False
    if found[OFFICIAL_UNET_FILE]:
        return True
    if local_files_only or hub_constants.HF_HUB_OFFLINE:
        return False
    try:
        files = set(HfApi().list_repo_files(source, revision=revision, token=token))
    except Exception as exc:  # not reachable or not a repo: diffusers gives the user-facing error
        logger.debug("could not list %s: %s", source, exc)
        return False
    return OFFICIAL_UNET_FILE in files and "model_index.json" not in files


_WEIGHT_ENDINGS = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def _weight_files(folder: str) -> list[str]:
    """The weight files in ``folder`` and one level below (paths relative to it), for error messages."""
    found = []
    for root, dirs, files in os.walk(folder):
        depth = os.path.relpath(root, folder).count(os.sep) + (root != folder)
        dirs[:] = [] if depth >= 1 else [d for d in dirs if not d.startswith(".")]
        found += [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/") for f in files
                  if f.endswith(_WEIGHT_ENDINGS)]
    return found


def resolve_official_files(
    source: str | os.PathLike,
    include_syncnet: bool = False,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> OfficialFiles:
    """Local paths of ``latentsync_unet.pt``, ``whisper/tiny.pt`` (and ``stable_syncnet.pt``) of a folder or Hub id."""
    source = os.fspath(source)
    if os.path.isfile(os.path.expanduser(source)):
        raise OfficialCheckpointError(f"{source} is a file: give the folder that holds {OFFICIAL_UNET_FILE} and "
                                      f"{OFFICIAL_WHISPER_FILE} (or a Hub id like ByteDance/LatentSync-1.6)")
    if _is_local(os.path.expanduser(source)):
        source = os.path.expanduser(source)
    names = {"unet": OFFICIAL_UNET_FILE, "whisper": OFFICIAL_WHISPER_FILE}
    if include_syncnet:
        names["syncnet"] = OFFICIAL_SYNCNET_FILE
    paths = {}
    if _is_local(source):
        for field, name in names.items():
            path = os.path.join(source, *name.split("/"))
            if not os.path.isfile(path):
                found = _weight_files(source)
                held = f" (it holds {_format_keys(found, limit=6)})" if found else ""
                if field == "whisper" and os.path.isfile(os.path.join(source, "whisper", "config.json")):
                    held += ": whisper/ is a transformers Whisper folder; the release's is openai's whisper/tiny.pt"
                raise OfficialCheckpointError(f"{source} lacks the official file {name}{held}")
            paths[field] = path
        return OfficialFiles(**paths)
    for field, name in names.items():
        try:
            paths[field] = hf_hub_download(
                source, name, revision=revision, cache_dir=cache_dir, token=token,
                local_files_only=local_files_only, force_download=force_download,
            )
        except Exception as exc:
            raise OfficialCheckpointError(f"cannot get {name} from {source}: {exc}") from exc
    return OfficialFiles(**paths)


_HUB_CACHE_REPO = re.compile(r"(?:^|/)models--([^/]+)--([^/]+)/(?:snapshots|blobs)/")
_HUB_GIT_REMOTE = re.compile(r"^\s*url\s*=\s*https?://(?:[^/@]+@)?(?:www\.)?(?:huggingface\.co|hf\.co)/"
                             r"([\w.-]+/[\w.-]+?)(?:\.git)?/?\s*$", re.MULTILINE)


# The released U-Net files as the Hub lists them: (size in bytes, SHA-256). The releases' files differ in size, so a
# plain copy (or the folder `hf download --local-dir` fills) is recognised without reading 5 GB; `--local-dir` also
# records each file's SHA-256 (its LFS etag) next to it, which is used instead of the size when present.
OFFICIAL_UNET_FILES = {
    "ByteDance/LatentSync-1.5": (5_072_348_184, "6440b49a7ccceff56cdc001f5f17605216337f5bbd66fa360139768926e23f51"),
    "ByteDance/LatentSync-1.6": (5_072_222_488, "0a478e89eb660f82da4c35dbdde8a5adfb27f99d1b4e50edd03729e1e98316d3"),
}


def _local_dir_etag(folder: str, filename: str) -> str | None:
    """The etag that ``hf download --local-dir`` recorded for ``filename`` in ``folder``, if the record exists and the
    file was not modified since. huggingface_hub's own reader creates folders and takes a lock in the model folder,
    which may be read-only; this only reads the three-line record (commit, etag, timestamp)."""
    record = os.path.join(folder, ".cache", "huggingface", "download", filename + ".metadata")
    try:
        with open(record, encoding="utf-8") as fh:
            _commit, etag, timestamp = (fh.readline().strip() for _ in range(3))
        # the library's own rule: a file changed after the record (1 s of clock slack) makes the record stale
        return etag if os.stat(os.path.join(folder, filename)).st_mtime - 1 <= float(timestamp) else None
    except (OSError, ValueError):
        return None


def official_release_of(folder: str | os.PathLike) -> str | None:
    """The official release (Hub id in ``OFFICIAL_RESOLUTIONS``) whose files a local folder holds, when its files say
    so: the folder, or the file its ``latentsync_unet.pt`` links to, lies in the Hub cache of that repo (a path from
    ``snapshot_download`` or a link to one); the folder is a git clone of it; ``hf download --local-dir`` recorded
    the SHA-256 of a released ``latentsync_unet.pt``; or, with no such record, the file has the exact size of a
    released one (``OFFICIAL_UNET_FILES``). None otherwise (a fine-tuned or converted file)."""
    folder = os.path.expanduser(os.fspath(folder))
    unet = os.path.join(folder, OFFICIAL_UNET_FILE)
    for path in (folder + os.sep, os.path.realpath(unet)):
        if (m := _HUB_CACHE_REPO.search(path.replace(os.sep, "/"))) is not None:
            repo = f"{m.group(1)}/{m.group(2)}"
            return repo if repo in OFFICIAL_RESOLUTIONS else None
    try:
        with open(os.path.join(folder, ".git", "config"), encoding="utf-8", errors="replace") as fh:
            official = {r for r in _HUB_GIT_REMOTE.findall(fh.read()) if r in OFFICIAL_RESOLUTIONS}
        return official.pop() if len(official) == 1 else None
    except OSError:
        pass
    etag = _local_dir_etag(folder, OFFICIAL_UNET_FILE)
    try:
        size = os.stat(unet).st_size
    except OSError:
        return None
    for release, (release_size, sha256) in OFFICIAL_UNET_FILES.items():
        if (etag == sha256) if etag is not None else (size == release_size):
            return release
    return None


def official_resolution(source: str | os.PathLike, requested: int | None = None) -> int:
    """Face resolution of an official release: ``requested`` when given (with a warning when the release was trained
    at another one), else 512 for LatentSync 1.6 and 256 otherwise (with a warning if the release is unknown).

    A local folder is that release when [`official_release_of`] tells it (a Hub cache snapshot, a git clone, a
    ``--local-dir`` download or a copy of the released file)."""
    source = os.fspath(source)
    release = source if source in OFFICIAL_RESOLUTIONS else (
        official_release_of(source) if os.path.isdir(os.path.expanduser(source)) else None)
    trained = OFFICIAL_RESOLUTIONS.get(release)
    if requested is not None:
        if trained is not None and requested != trained:
            held = "" if release == source else f" holds {release}, which"
            logger.warning("%s%s was trained on %d px faces: resolution %d gives blurred or distorted mouths",
                           source, held, trained, requested)
        return requested
    if trained is not None:
        if release != source:
            logger.info("%s holds %s: resolution %d", source, release, trained)
        return trained
    logger.warning(
        "resolution of %s is unknown: using %d (LatentSync 1.0/1.5); pass resolution=512 for LatentSync 1.6 weights",
        source, DEFAULT_OFFICIAL_RESOLUTION,
    )
    return DEFAULT_OFFICIAL_RESOLUTION


# diffusers loading options that have no meaning for a .pt release (accepted and ignored)
_IGNORED_LOAD_KWARGS = {"use_safetensors", "low_cpu_mem_usage", "variant", "proxies"}


def load_official_components(
    source: str | os.PathLike,
    *,
    resolution: int | None = None,
    vae_id: str | os.PathLike = OFFICIAL_VAE_ID,
    torch_dtype: torch.dtype | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    **components: Any,
) -> dict[str, Any]:
    """The components of a LatentSync pipeline (``unet``, ``vae``, ``audio_encoder``, ``feature_extractor``,
    ``scheduler``) and its ``resolution``, from an official release (folder or Hub id), converted in memory.

    ``LatentSyncPipeline(**load_official_components(source))`` is the pipeline (``from_pretrained`` does that).

    Args:
        source: ``"ByteDance/LatentSync-1.6"``, ``"ByteDance/LatentSync-1.5"`` or a folder with
            ``latentsync_unet.pt`` and ``whisper/tiny.pt``.
        resolution: aligned-face size; default from the release (512 for 1.6, 256 otherwise).
        vae_id: Hub id or folder of the SD VAE (``stabilityai/sd-vae-ft-mse``), loaded with ``from_pretrained``.
        torch_dtype: dtype of the models (default float32); ``dtype`` is the same (diffusers' newer name).
        components: ready-made ``unet``, ``vae``, ``audio_encoder``, ``feature_extractor`` or ``scheduler`` to use
            instead of the converted / default ones.
    """
    torch_dtype = torch_dtype or dtype
    for ignored in _IGNORED_LOAD_KWARGS & set(components):
        logger.info("%s does not apply to an official checkpoint: ignored", ignored)
        components.pop(ignored)
    allowed = {"unet", "vae", "audio_encoder", "feature_extractor", "scheduler"}
    if unknown := set(components) - allowed:
        raise TypeError(f"unexpected arguments for an official checkpoint: {sorted(unknown)}")
    hub = dict(cache_dir=cache_dir, revision=revision, token=token, local_files_only=local_files_only)
    need_files = components.get("unet") is None or components.get("audio_encoder") is None
    files = resolve_official_files(source, force_download=force_download, **hub) if need_files else None
    unet = components.get("unet") or load_official_unet(files.unet, torch_dtype=torch_dtype)
    if components.get("unet") is None and unet.config.motion_modules == "none":  # (stage 2 training starts from one)
        logger.warning("%s is a stage-1 U-Net (no temporal layers): the official releases' latentsync_unet.pt is a "
                       "stage-2 one; this one gives less stable mouths from frame to frame", files.unet)
    audio_encoder = components.get("audio_encoder") or load_official_whisper(files.whisper, torch_dtype=torch_dtype)
    vae = components.get("vae")
    if vae is None:
        with loading("vae_id", vae_id):  # a missing or uncached VAE: one line, not diffusers' traceback
            vae = AutoencoderKL.from_pretrained(
                vae_id, torch_dtype=torch_dtype, cache_dir=cache_dir, token=token, local_files_only=local_files_only
            )
        vae.register_to_config(scaling_factor=OFFICIAL_VAE_SCALING_FACTOR)
    feature_extractor = components.get("feature_extractor") or WhisperFeatureExtractor(
        feature_size=audio_encoder.config.num_mel_bins
    )
    scheduler = components.get("scheduler") or official_scheduler()
    if unet.config.cross_attention_dim != audio_encoder.config.d_model:
        unet_name = files.unet if files and components.get("unet") is None else "the U-Net"
        whisper_name = files.whisper if files and components.get("audio_encoder") is None else "the audio encoder"
        raise OfficialCheckpointError(
            f"{unet_name} expects {unet.config.cross_attention_dim}-wide Whisper features, but {whisper_name} is a "
            f"Whisper with width {audio_encoder.config.d_model}: LatentSync uses Whisper tiny (384 wide), as "
            f"{OFFICIAL_WHISPER_FILE} of the release"
        )
    if components.get("audio_encoder") is None and audio_encoder.config.vocab_size == WHISPER_ENGLISH_ONLY_VOCAB:
        raise OfficialCheckpointError(
            f"{files.whisper} is an English-only Whisper (like tiny.en: n_vocab {WHISPER_ENGLISH_ONLY_VOCAB}); "
            "LatentSync's U-Nets were trained on the features of the multilingual Whisper tiny (n_vocab 51865), "
            f"which differ: use the release's {OFFICIAL_WHISPER_FILE} (or pass audio_encoder= to force this one)")
    resolution = official_resolution(source, resolution)
    multiple = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (len(unet.config.down_block_types) - 1)
    if resolution <= 0 or resolution % multiple:
        raise OfficialCheckpointError(f"resolution {resolution} is not a positive multiple of {multiple}, which this "
                                      "model's VAE and U-Net need (the official releases use 256 or 512)")
    return dict(
        unet=unet,
        vae=vae.eval(),
        audio_encoder=audio_encoder,
        feature_extractor=feature_extractor,
        scheduler=scheduler,
        resolution=resolution,
    )


# ---------------------------------------------------------------------------------------------------- any layout


def read_config(source: str, subfolder: str | None, filename: str) -> dict | None:
    """A JSON config file of a Hub repo or folder, or None when it does not exist."""
    if os.path.isdir(source):
        path = os.path.join(source, subfolder or "", filename)
        if not os.path.isfile(path):
            return None
    else:
        try:
            path = hf_hub_download(source, filename, subfolder=subfolder)
        except Exception:  # noqa: BLE001 - missing file or repo: the caller tries another layout
            return None
    with open(path) as fh:
        return json.load(fh)


def find_official_file(source: str, filename: str) -> str | None:
    """Path of an official ``.pt`` checkpoint: ``source`` itself, ``source/filename``, or a Hub download."""
    if os.path.isfile(source):
        return source
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        return path if os.path.isfile(path) else None
    try:
        return hf_hub_download(source, filename)
    except Exception:  # noqa: BLE001 - not an official repo layout
        return None


def load_syncnet(source: str | os.PathLike, subfolder: str | None = None, preset: str | None = None,
                 torch_dtype: torch.dtype | None = None) -> StableSyncNet:
    """A StableSyncNet from a diffusers-format folder or Hub repo (``config.json``, ``from_pretrained``), or from an
    official ``stable_syncnet.pt`` (the file, or a folder or Hub repo holding it), converted strictly."""
    source = os.fspath(source)
    if os.path.isfile(source):
        return load_official_syncnet(source, preset=preset, torch_dtype=torch_dtype)
    if os.path.isdir(source) and (problem := syncnet_folder_problem(source, subfolder)) is not None:
        raise FileNotFoundError(f"no StableSyncNet at {source}: {problem}")
    if read_config(source, subfolder, "config.json") is not None:
        dtype = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        return StableSyncNet.from_pretrained(source, subfolder=subfolder, **dtype)
    inner = os.path.join(source, subfolder) if subfolder and os.path.isdir(source) else source
    path = find_official_file(inner, OFFICIAL_SYNCNET_FILE)
    if path is None:
        raise FileNotFoundError(f"no StableSyncNet (config.json or {OFFICIAL_SYNCNET_FILE}) at {source}")
    return load_official_syncnet(path, preset=preset, torch_dtype=torch_dtype)
