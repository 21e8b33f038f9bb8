"""`StableSyncNet`: LatentSync's lip-sync expert, which judges whether a mouth moves with the sound.

Two convolutional towers embed a 16-frame clip of mouth crops and the matching Wav2Lip-style mel window into the
same space; a clip is "in sync" when the cosine similarity of the two embeddings is high. Each tower is an SD-style
stack of residual blocks (GroupNorm, SiLU, 3x3 convs, 1x1 shortcut) with an optional strided downsampling conv,
optional self-attention blocks, a final GroupNorm and a ReLU. The output map is 1 x 1, flattened and L2-normalised;
because of the ReLU the embeddings are non-negative and their cosine similarity lies in [0, 1], which is what lets
the loss treat it as a probability (binary cross-entropy on the cosine, [`syncnet_bce_loss`]).

Inputs:

* ``frames``: ``(B, F * C, H, W)`` in [-1, 1]; ``F`` frames stacked frame-major on channels (``b f c h w -> b (f c) h
  w``). For the pixel configs ``C = 3`` and the image is the lower half of the 256 x 256 aligned face (128 x 256).
  For the latent config ``C = 4`` SD-VAE latents (x 0.18215) of the whole face, 32 x 32. A 5-D ``(B, F, C, H, W)``
  tensor is folded for you.
* ``mel``: ``(B, 1, 80, T)`` Wav2Lip-style mel (``latentsync.syncnet_audio``), ``T = ceil(3.2 F)`` (52 for 16 frames).

State-dict naming (identical to the official ``stable_syncnet.pt`` ``"state_dict"``, so it loads without renaming)::

    {audio,visual}_encoder.conv_in.{weight,bias}
    {audio,visual}_encoder.down_blocks.<i>.{norm1,conv1,norm2,conv2}.{weight,bias}       # residual block
    {audio,visual}_encoder.down_blocks.<i>.conv_shortcut.{weight,bias}                    # when channels change
    {audio,visual}_encoder.down_blocks.<i>.downsample_conv.{weight,bias}                  # when factor != 1
    {audio,visual}_encoder.down_blocks.<i>.{norm1,conv_in,norm2,norm3,conv_out}.*         # attention block
    {audio,visual}_encoder.down_blocks.<i>.attn.{to_q,to_k,to_v,to_out.0}.{weight,bias}
    {audio,visual}_encoder.down_blocks.<i>.ff.net.0.proj.*, ...ff.net.2.*
    {audio,visual}_encoder.norm_out.{weight,bias}

``<i>`` counts residual and attention blocks together, in order (an attention block takes the index after the
residual block it follows), as in the official module list.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

DownsampleFactor = int | tuple[int, int] | list[int]


def _stride(factor: DownsampleFactor) -> tuple[int, int]:
    if isinstance(factor, int):
        return (factor, factor)
    if len(factor) != 2:
        raise ValueError(f"downsample factor must be an int or a pair (h, w), got {factor!r}")
    return (int(factor[0]), int(factor[1]))


class SyncNetResnetBlock2D(nn.Module):
    """Pre-activation residual block, then an optional strided 3x3 conv with asymmetric zero padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        downsample_factor: DownsampleFactor = 2,
        norm_num_groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        stride = _stride(downsample_factor)
        if stride == (1, 1):
            self.downsample_conv = None
            self.pad = None
        else:
            self.downsample_conv = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=0)
            # F.pad order (left, right, top, bottom): pad one pixel at the end of each strided axis and one on both
            # sides of an axis that keeps its size (stride 1), so a 3x3 kernel keeps it unchanged.
            pad_w = (1, 1) if stride[1] == 1 else (0, 1)
            pad_h = (1, 1) if stride[0] == 1 else (0, 1)
            self.pad = pad_w + pad_h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        h = h + x
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))
        return h


class SyncNetAttentionBlock2D(nn.Module):
    """Spatial self-attention block: GroupNorm, 1x1 conv, LayerNorm + 8-head attention, LayerNorm + GEGLU FF."""

    def __init__(self, channels: int, norm_num_groups: int = 32, num_heads: int = 8, dropout: float = 0.0):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels ({channels}) must be divisible by the number of heads ({num_heads})")
        self.norm1 = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.norm2 = nn.LayerNorm(channels)
        self.attn = Attention(query_dim=channels, heads=num_heads, dim_head=channels // num_heads, dropout=dropout,
                              bias=True)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, dropout=dropout, activation_fn="geglu")
        self.conv_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hidden = self.conv_in(self.norm1(x))
        tokens = hidden.flatten(2).transpose(1, 2)  # (b, h*w, c)
        tokens = self.attn(self.norm2(tokens)) + tokens
        tokens = self.ff(self.norm3(tokens)) + tokens
        hidden = tokens.transpose(1, 2).reshape(b, c, h, w)
        return self.conv_out(hidden) + x


class SyncNetEncoder(nn.Module):
    """One tower: ``conv_in`` -> residual (+ attention) blocks -> GroupNorm -> ReLU. Output ``(B, C_last, h, w)``."""

    def __init__(
        self,
        in_channels: int,
        block_out_channels: list[int],
        downsample_factors: list[DownsampleFactor],
        attn_blocks: list[int] | None = None,
        norm_num_groups: int = 32,
        dropout: float = 0.0,
    ):
        super().__init__()
        n = len(block_out_channels)
        attn_blocks = list(attn_blocks) if attn_blocks is not None else [0] * n
        if len(downsample_factors) != n or len(attn_blocks) != n:
            raise ValueError(
                f"block_out_channels ({n}), downsample_factors ({len(downsample_factors)}) and attn_blocks "
                f"({len(attn_blocks)}) must have the same length"
            )
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        prev = block_out_channels[0]
        for channels, factor, attn in zip(block_out_channels, downsample_factors, attn_blocks):
            self.down_blocks.append(SyncNetResnetBlock2D(prev, channels, factor, norm_num_groups, dropout=dropout))
            if attn:
                self.down_blocks.append(SyncNetAttentionBlock2D(channels, norm_num_groups, dropout=dropout))
            prev = channels
        self.norm_out = nn.GroupNorm(norm_num_groups, prev, eps=1e-6)
        self.act_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x)
            else:
                x = block(x)
        return self.act_out(self.norm_out(x))


# Official configs (configs/syncnet/*.yaml). Input shapes: audio (1, 80, ceil(3.2 F)); visual (F*3, 128, 256) for
# the pixel configs (lower half of a 256 x 256 face), (F*4, 32, 32) for the latent config.
_PIXEL_16 = dict(
    audio_in_channels=1,
    audio_block_out_channels=[32, 64, 128, 256, 512, 1024, 2048],
    audio_downsample_factors=[[2, 1], 2, 2, 1, 2, 2, [2, 3]],
    visual_in_channels=48,
    visual_block_out_channels=[64, 128, 256, 256, 512, 1024, 2048, 2048],
    visual_downsample_factors=[[1, 2], 2, 2, 2, 2, 2, 2, 2],
    num_frames=16,
    resolution=256,
    lower_half=True,
    latent_space=False,
)
SYNCNET_CONFIGS: dict[str, dict] = {
    # the released stable_syncnet.pt: self-attention after two audio and two visual blocks
    "16_pixel_attn": dict(_PIXEL_16, audio_attn_blocks=[0, 0, 0, 1, 1, 0, 0],
                          visual_attn_blocks=[0, 0, 0, 0, 1, 1, 0, 0]),
    # LatentSync 1.0: the same towers without attention
    "16_pixel": dict(_PIXEL_16, audio_attn_blocks=[0] * 7, visual_attn_blocks=[0] * 8),
    # SD-VAE latents of the whole face: 16 frames x 4 channels of 32 x 32, shallower towers, 1024-d
    "16_latent": dict(
        _PIXEL_16,
        audio_block_out_channels=[32, 64, 128, 256, 512, 1024],
        audio_downsample_factors=[[2, 1], 2, 2, 2, 2, [2, 3]],
        audio_attn_blocks=[0] * 6,
        visual_in_channels=64,
        visual_block_out_channels=[64, 128, 256, 256, 512, 1024],
        visual_downsample_factors=[2, 2, 2, 1, 2, 2],
        visual_attn_blocks=[0] * 6,
        lower_half=False,
        latent_space=True,
    ),
    # 25 frames (one second) of pixels, wider visual tower at full resolution
    "25_pixel": dict(
        _PIXEL_16,
        audio_block_out_channels=[64, 128, 256, 256, 512, 1024],
        audio_downsample_factors=[2] * 6,
        audio_attn_blocks=[0] * 6,
        visual_in_channels=75,
        visual_block_out_channels=[128, 128, 256, 256, 512, 512, 1024, 1024],
        visual_attn_blocks=[0] * 8,
        num_frames=25,
    ),
}


class StableSyncNet(ModelMixin, ConfigMixin):
    """LatentSync's SyncNet: audio and visual towers producing L2-normalised, non-negative embeddings.

    Build an official architecture with [`StableSyncNet.from_preset`] (``"16_pixel_attn"`` is the released
    ``stable_syncnet.pt``), any other with the constructor, and load trained weights with ``from_pretrained``.

    Args:
        audio_in_channels / visual_in_channels: input channels of each tower (1 for the mel; ``F * 3`` pixels or
            ``F * 4`` latents).
        *_block_out_channels: output channels of each residual block; the last audio and visual values are the
            embedding size and must be equal.
        *_downsample_factors: stride of each block's downsampling conv, an int or ``[h, w]`` (1 = none).
        *_attn_blocks: 1 to add a self-attention block after that residual block.
        norm_num_groups: GroupNorm groups (32 officially; channel counts must be divisible by it).
        dropout: dropout inside residual and attention blocks (0 officially).
        num_frames, resolution, lower_half, latent_space, audio_mel_frames: how the inputs are made (frames per
            clip, side of the aligned face before cropping, keep only the mouth half, VAE latents instead of
            pixels, mel frames per window; default ``ceil(3.2 * num_frames)``). The model itself only checks shapes
            against them; data loaders and evaluation tools read them from the config.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        audio_in_channels: int = 1,
        audio_block_out_channels: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048),
        audio_downsample_factors: tuple = ((2, 1), 2, 2, 1, 2, 2, (2, 3)),
        audio_attn_blocks: tuple[int, ...] = (0, 0, 0, 1, 1, 0, 0),
        visual_in_channels: int = 48,
        visual_block_out_channels: tuple[int, ...] = (64, 128, 256, 256, 512, 1024, 2048, 2048),
        visual_downsample_factors: tuple = ((1, 2), 2, 2, 2, 2, 2, 2, 2),
        visual_attn_blocks: tuple[int, ...] = (0, 0, 0, 0, 1, 1, 0, 0),
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        num_frames: int = 16,
        resolution: int = 256,
        lower_half: bool = True,
        latent_space: bool = False,
        audio_mel_frames: int | None = None,
    ):
        super().__init__()
        if audio_block_out_channels[-1] != visual_block_out_channels[-1]:
            raise ValueError(
                f"audio and visual embeddings must have the same size, got {audio_block_out_channels[-1]} and "
                f"{visual_block_out_channels[-1]}"
            )
        self.audio_encoder = SyncNetEncoder(audio_in_channels, list(audio_block_out_channels),
                                            list(audio_downsample_factors), list(audio_attn_blocks), norm_num_groups,
                                            dropout)
        self.visual_encoder = SyncNetEncoder(visual_in_channels, list(visual_block_out_channels),
                                             list(visual_downsample_factors), list(visual_attn_blocks),
                                             norm_num_groups, dropout)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> StableSyncNet:
        """Randomly initialised model with an official architecture: one of [`SYNCNET_CONFIGS`]."""
        if name not in SYNCNET_CONFIGS:
            raise ValueError(f"unknown SyncNet preset {name!r}; choose one of {', '.join(SYNCNET_CONFIGS)}")
        config = copy.deepcopy(SYNCNET_CONFIGS[name])
        config.update(overrides)
        return cls(**config)

    @property
    def embedding_dim(self) -> int:
        return int(self.config.visual_block_out_channels[-1])

    @property
    def mel_frames(self) -> int:
        """Mel frames per window: ``ceil(3.2 * num_frames)`` unless set in the config (52 for 16 frames)."""
        return int(self.config.audio_mel_frames or math.ceil(self.config.num_frames / 5 * 16))

    def _embed(self, encoder: SyncNetEncoder, x: torch.Tensor, what: str) -> torch.Tensor:
        out = encoder(x)
        if out.shape[-2:] != (1, 1):
            raise ValueError(
                f"{what} input of spatial size {tuple(x.shape[-2:])} gives a {tuple(out.shape[-2:])} map, not 1 x 1: "
                "the input size does not match this SyncNet configuration"
            )
        return F.normalize(out.flatten(1), p=2, dim=1)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Visual embeddings ``(B, D)`` for stacked frames ``(B, F*C, H, W)`` (or ``(B, F, C, H, W)``)."""
        if frames.ndim == 5:
            frames = frames.flatten(1, 2)
        if frames.ndim != 4 or frames.shape[1] != self.config.visual_in_channels:
            raise ValueError(
                f"frames must be (batch, {self.config.visual_in_channels}, H, W) = {self.config.num_frames} frames "
                f"stacked on channels, got shape {tuple(frames.shape)}"
            )
        return self._embed(self.visual_encoder, frames, "visual")

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Audio embeddings ``(B, D)`` for mel windows ``(B, 1, 80, T)``."""
        if mel.ndim == 3:
            mel = mel.unsqueeze(1)
        if mel.ndim != 4 or mel.shape[1] != self.config.audio_in_channels:
            raise ValueError(f"mel must be (batch, {self.config.audio_in_channels}, 80, T), got {tuple(mel.shape)}")
        return self._embed(self.audio_encoder, mel, "audio")

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(visual_embeds, audio_embeds)``, both ``(B, D)``, unit length and non-negative."""
        return self.encode_frames(frames), self.encode_audio(mel)


def syncnet_cosine(visual_embeds: torch.Tensor, audio_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per pair ``(B,)``, computed in float32 and clamped to [0, 1] (the sync probability)."""
    sims = F.cosine_similarity(visual_embeds.float(), audio_embeds.float(), dim=1)
    return sims.clamp(0.0, 1.0)


def syncnet_bce_loss(
    visual_embeds: torch.Tensor, audio_embeds: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Binary cross-entropy of the cosine similarity against ``labels`` (1 = in sync, 0 = off sync).

    For positives this is ``-log(cos)``; for negatives ``-log(1 - cos)`` (the log is floored at -100, as torch's BCE
    does). ``labels`` may be ``(B,)`` or ``(B, 1)``.
    """
    sims = syncnet_cosine(visual_embeds, audio_embeds)
    labels = labels.reshape(-1).to(sims)
    if labels.shape != sims.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match the batch of embeddings {tuple(sims.shape)}")
    return F.binary_cross_entropy(sims, labels, reduction=reduction)
