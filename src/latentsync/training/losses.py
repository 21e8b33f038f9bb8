"""Losses of LatentSync U-Net training (paper section 3): the noise MSE of stage 1 and the pixel-space losses of
stage 2.

* [`mixed_noise`]: shared-plus-per-frame Gaussian noise for a clip (Ge et al. 2023).
* [`predict_x0`]: one-step estimate of the clean latents from the predicted noise.
* [`LPIPSLoss`]: LPIPS perceptual distance on a pluggable backbone (VGG-16 by default,
  [`~latentsync.models.VGG16Features`]), with the LPIPS linear heads loaded from a file.
* [`TREPALoss`]: temporal representation alignment: MSE between L2-normalised, mean-pooled features of a frozen
  video encoder (transformers' VideoMAE) for the generated and the ground-truth clip.
* [`SyncLoss`]: SyncNet (frozen) BCE on the lower half of the generated frames against the clip's mel window.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, VideoMAEForVideoClassification, VideoMAEModel

from ..models.syncnet import syncnet_bce_loss
from ..models.vgg import VGG16_HUB_ID, VGG16Features  # noqa: F401 - VGG16Features is the default LPIPS backbone
from ..utils import load_state_file

logger = logging.getLogger(__name__)

TREPA_DEFAULT_ID = "MCG-NJU/videomae-base-finetuned-ssv2"


# ---------------------------------------------------------------------------------------------------- noise, x0
def mixed_noise(
    shape: Sequence[int],
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Mixed noise for clips ``(B, C, F, H, W)``: a map shared by all frames plus independent per-frame noise.

    The shared part has variance ``alpha**2 / (1 + alpha**2)`` and the per-frame part ``1 / (1 + alpha**2)``, so
    the sum is unit-variance Gaussian per element with frame-to-frame correlation ``alpha**2 / (1 + alpha**2)``.
    """
    if len(shape) != 5:
        raise ValueError(f"mixed_noise needs a clip shape (B, C, F, H, W), got {tuple(shape)}")
    b, c, f, h, w = shape
    shared = torch.randn((b, c, 1, h, w), generator=generator, device=device, dtype=dtype)
    per_frame = torch.randn((b, c, f, h, w), generator=generator, device=device, dtype=dtype)
    shared_std = (alpha**2 / (1 + alpha**2)) ** 0.5
    frame_std = (1 / (1 + alpha**2)) ** 0.5
    return shared_std * shared + frame_std * per_frame


def _expand_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], *([1] * (x.ndim - 1)))


def predict_x0(
    noisy: torch.Tensor, noise_pred: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """One-step clean-latent estimate ``x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)`` (no clipping).

    ``timesteps`` holds one integer step per batch element; ``alphas_cumprod`` is the scheduler's table.
    """
    abar = alphas_cumprod.to(device=noisy.device, dtype=torch.float32)[timesteps.long().to(noisy.device)]
    abar = _expand_like(abar, noisy)
    x0 = (noisy.float() - (1 - abar).sqrt() * noise_pred.float()) / abar.sqrt()
    return x0.to(noise_pred.dtype)


def lower_half(frames: torch.Tensor) -> torch.Tensor:
    """Rows ``H/2 .. H`` (the mouth half of an aligned face) of images ``(..., H, W)``."""
    return frames[..., frames.shape[-2] // 2 :, :]


# ---------------------------------------------------------------------------------------------------- LPIPS
def torchmetrics_lpips_heads_path(net: str = "vgg") -> str:
    """Path of the LPIPS linear-head weights (``lin{k}.model.1.weight``) shipped inside the torchmetrics wheel."""
    spec = importlib.util.find_spec("torchmetrics")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("torchmetrics is not installed: pass lpips heads as a file path")
    path = os.path.join(list(spec.submodule_search_locations)[0], "functional", "image", "lpips_models", f"{net}.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no LPIPS heads at {path}")
    return path


class LPIPSLoss(nn.Module):
    """LPIPS distance (Zhang et al. 2018) between images in [-1, 1]: per-tap channel-normalised feature differences,
    squared, weighted by non-negative 1x1 linear heads, averaged over space and summed over taps.

    Args:
        backbone: module mapping ``(N, 3, H, W)`` to a list of feature maps; ``tap_channels`` lists their widths.
        heads: LPIPS linear weights: a file (``lin{k}.model.1.weight`` as in the LPIPS / torchmetrics ``vgg.pth``,
            or ``lin{k}.weight`` safetensors), a state dict, or None for the torchmetrics-shipped VGG heads. Pass
            ``"uniform"`` for equal weights (an un-learned LPIPS variant, used for tiny test backbones).
    """

    def __init__(self, backbone: nn.Module, heads: str | dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        channels = list(backbone.tap_channels)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        if isinstance(heads, str) and heads == "uniform":
            for lin, c in zip(self.lins, channels):
                nn.init.constant_(lin.weight, 1.0 / c)
        else:
            state = heads if isinstance(heads, dict) else load_state_file(heads or torchmetrics_lpips_heads_path())
            mapped = {}
            for k, v in state.items():
                idx = k.split(".")[0].removeprefix("lin")
                if idx.isdigit():
                    mapped[f"{idx}.weight"] = v
            self.lins.load_state_dict(mapped, strict=True)
        self.lins.requires_grad_(False)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS over a batch of images ``(N, 3, H, W)`` in [-1, 1]."""
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"LPIPS needs two (N, 3, H, W) batches of equal shape, got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        dtype = next(self.backbone.parameters()).dtype
        x = torch.cat([pred, target]).to(dtype)
        feats = self.backbone((x - self.shift.to(dtype)) / self.scale.to(dtype))
        total = 0.0
        for lin, f in zip(self.lins, feats):
            f = f.float()
            f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            a, b = f.chunk(2)
            total = total + lin.float()((a - b) ** 2).mean(dim=(2, 3))
        return total.mean()


# ---------------------------------------------------------------------------------------------------- TREPA
class TREPALoss(nn.Module):
    """Temporal REPresentation Alignment: frozen video encoder, MSE of L2-normalised clip features.

    Clips ``(B, F, 3, H, W)`` in [-1, 1] are resized per frame (bicubic) to the encoder's ``image_size``, mapped to
    [0, 1] (no mean/std normalisation, as in the official code), encoded, mean-pooled over tokens (then the
    checkpoint's ``fc_norm`` when it has one) and L2-normalised.

    Args:
        encoder: a transformers ``VideoMAEModel``.
        fc_norm: optional LayerNorm applied to the pooled feature (from a ``VideoMAEForVideoClassification``).
    """

    def __init__(self, encoder: nn.Module, fc_norm: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.fc_norm = fc_norm.eval().requires_grad_(False) if fc_norm is not None else None

    @classmethod
    def from_pretrained(cls, model_id: str = TREPA_DEFAULT_ID, **kwargs) -> "TREPALoss":
        """Load a VideoMAE checkpoint by Hub id or folder (classification checkpoints keep their ``fc_norm``)."""
        config = AutoConfig.from_pretrained(model_id, **kwargs)
        if "VideoMAEForVideoClassification" in (config.architectures or []) and config.use_mean_pooling:
            full = VideoMAEForVideoClassification.from_pretrained(model_id, **kwargs)
            return cls(full.videomae, full.fc_norm)
        return cls(VideoMAEModel.from_pretrained(model_id, **kwargs))

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """L2-normalised clip features ``(B, D)`` for clips ``(B, F, 3, H, W)`` in [-1, 1]."""
        cfg = self.encoder.config
        b, f = clips.shape[:2]
        if f != cfg.num_frames:
            raise ValueError(f"the TREPA video encoder takes {cfg.num_frames} frames, got {f}")
        size = cfg.image_size
        x = clips.reshape(b * f, *clips.shape[2:])
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False)
        x = ((x + 1) / 2).clamp(0, 1).reshape(b, f, 3, size, size)
        dtype = next(self.encoder.parameters()).dtype
        hidden = self.encoder(pixel_values=x.to(dtype)).last_hidden_state
        pooled = hidden.mean(dim=1)
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        return F.normalize(pooled.float(), dim=-1)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_feat = self.features(target)
        return F.mse_loss(self.features(pred), target_feat)


# ---------------------------------------------------------------------------------------------------- SyncNet
class SyncLoss(nn.Module):
    """SyncNet loss on generated clips: BCE of the audio-visual cosine similarity against "in sync" (label 1).

    Frames ``(B, F, 3, H, W)`` in [-1, 1] are resized to the SyncNet's resolution when needed (bicubic, as the
    official code), their lower half is stacked on channels frame-major ``(B, F*3, H/2, W)`` and scored against the
    clip's mel window ``(B, 1, 80, 52)``. The SyncNet ([`~latentsync.models.syncnet.StableSyncNet`]) is frozen;
    gradients reach the frames.
    """

    def __init__(self, syncnet: nn.Module, resolution: int | None = None):
        super().__init__()
        self.syncnet = syncnet.eval().requires_grad_(False)
        self.resolution = resolution or int(getattr(syncnet.config, "resolution", 256))

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        b, f, c, h, w = frames.shape
        r = self.resolution
        x = frames.reshape(b * f, c, h, w)
        if (h, w) != (r, r):
            x = F.interpolate(x.float(), size=(r, r), mode="bicubic", align_corners=False)
        x = lower_half(x).reshape(b, f * c, r - r // 2, r)
        dtype = next(self.syncnet.parameters()).dtype
        visual, audio = self.syncnet(x.to(dtype), mel.to(device=x.device, dtype=dtype))
        return syncnet_bce_loss(visual, audio, torch.ones(b, device=x.device))
