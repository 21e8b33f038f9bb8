"""The LatentSync U-Net: diffusers' ``UNetMotionModel`` configured for audio-conditioned inpainting.

The official model differs from stock diffusers in three documented ways, all reproduced here:

* ResNet ``GroupNorm`` layers and ``conv_norm_out`` normalise over all frames of a clip together
  (``frame_pooled_norm=True``), whereas diffusers normalises each frame separately.
* The temporal (motion) modules normalise each frame separately, whereas diffusers pools frames.
* Version 1.5/1.6 "efficient" checkpoints have temporal layers only in the decoder
  (``motion_modules="decoder"``), version 1.0 and stage-1 checkpoints have none (``"none"``).

For speed the U-Net also takes a ``frame_mask`` (real frames of padded clips, so that clips of different lengths
share one fixed input shape and give the same result as unpadded) and a launch-light frame-pooled GroupNorm
([`LatentSyncUNet.set_fused_norm`]).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import contextlib
import inspect

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNetMotionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from .attention import FrameMaskedAttnProcessor, attention_kinds

# diffusers finds a pipeline component's loader by looking up base classes in the component's module namespace.
__all__ = ["LatentSyncUNet", "ModelMixin"]

MotionPlacement = Literal["all", "decoder", "none"]


class _FrameCount:
    """The clips of the forward pass in progress, shared by the frame-aware layers: ``value`` frames per clip, the
    ``mask`` of real frames ``(clips, frames)`` (None: every frame is real) and whether the pooled norms use the
    fused computation (``fused``)."""

    def __init__(self) -> None:
        self.value = 1
        self.mask: torch.Tensor | None = None
        self.fused = False


def pooled_group_norm(x: torch.Tensor, frames: int, num_groups: int, weight: torch.Tensor | None,
                      bias: torch.Tensor | None, eps: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """GroupNorm of ``x`` ``(clips * frames, C, H, W)`` with statistics pooled over the frames of each clip (only the
    frames where ``mask`` ``(clips, frames)`` is True), computed without transposing ``x``.

    Per-frame statistics come from one reduction (two for fp16/bf16 inputs, accumulated in fp32), are combined per
    clip on tiny tensors, and the normalisation and affine are one ``addcmul`` that computes in fp32 and writes in the
    input's dtype and memory format (channels-last included). The result equals the reference (transpose, GroupNorm
    over ``(C, frames, H, W)``, transpose back) within float rounding.
    """
    bf, c, h, w = x.shape
    clips, cg = bf // frames, c // num_groups
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y, dims = x.permute(0, 2, 3, 1).reshape(clips, frames, h * w, num_groups, cg), (2, 4)
    else:
        y, dims = x.reshape(clips, frames, num_groups, cg * h * w), (3,)
    if x.dtype == torch.float32:
        var, mean = torch.var_mean(y, dim=dims, correction=0)  # (clips, frames, groups)
    else:  # one pass with fp32 accumulation: exact enough for 8- or 11-bit mantissas, and no fp32 copy of x
        n = y.numel() // (clips * frames * num_groups)
        mean = torch.sum(y, dim=dims, dtype=torch.float32) / n
        var = (torch.linalg.vector_norm(y, 2, dim=dims, dtype=torch.float32) ** 2 / n - mean**2).clamp_min(0)
    if mask is None:
        clip_mean = mean.mean(1, keepdim=True)
        clip_var = (var + (mean - clip_mean) ** 2).mean(1, keepdim=True)
    else:
        wts = mask.to(torch.float32)[..., None]  # (clips, frames, 1)
        total = wts.sum(1, keepdim=True).clamp_min(1.0)
        clip_mean = (mean * wts).sum(1, keepdim=True) / total
        clip_var = ((var + (mean - clip_mean) ** 2) * wts).sum(1, keepdim=True) / total
    rstd = torch.rsqrt(clip_var + eps)  # (clips, 1, groups)
    scale = rstd.repeat_interleave(cg, dim=2)  # per channel
    shift = -clip_mean.repeat_interleave(cg, dim=2) * scale
    if weight is not None:
        scale, shift = scale * weight.float(), shift * weight.float() + bias.float()
    scale = scale.expand(clips, frames, c).reshape(bf, c, 1, 1)
    shift = shift.expand(clips, frames, c).reshape(bf, c, 1, 1)
    # out= (x's dtype and memory format, no fp32 copy) records no gradients and breaks torch.compile's graph, whose
    # fused kernel needs no copy anyway
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)):
        return torch.addcmul(shift, x, scale).to(x.dtype)
    return torch.addcmul(shift, x, scale, out=torch.empty_like(x))


class FramePooledGroupNorm(nn.GroupNorm):
    """GroupNorm over a ``(batch * frames, C, H, W)`` tensor whose statistics pool all frames of a clip."""

    def __init__(self, num_groups: int, num_channels: int, eps: float, affine: bool, frames: _FrameCount):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self._frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, mask = self._frames.value, self._frames.mask
        if mask is not None or (self._frames.fused and f > 1):
            return pooled_group_norm(x, f, self.num_groups, self.weight, self.bias, self.eps, mask)
        if f <= 1:
            return super().forward(x)
        bf, c, h, w = x.shape
        y = x.reshape(bf // f, f, c, h * w).transpose(1, 2)
        y = F.group_norm(y, self.num_groups, self.weight, self.bias, self.eps)
        return y.transpose(1, 2).reshape(bf, c, h, w)


class PerFrameGroupNorm(nn.GroupNorm):
    """GroupNorm over a ``(B, C, F, H, W)`` tensor that normalises every frame on its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * f, c, h, w)
        y = F.group_norm(y, self.num_groups, self.weight, self.bias, self.eps)
        return y.reshape(b, f, c, h, w).transpose(1, 2)


class _NoMotion(nn.Module):
    """Placeholder for a motion module that the configuration leaves out (identity)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


def _swap_norm(norm: nn.GroupNorm, cls, **kwargs) -> nn.GroupNorm:
    new = cls(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine, **kwargs)
    new.load_state_dict(norm.state_dict())
    return new.to(device=norm.weight.device, dtype=norm.weight.dtype)


class LatentSyncUNet(UNetMotionModel):
    """Audio-conditioned inpainting U-Net of LatentSync.

    Input ``sample`` is ``(B, 13, F, h, w)``: noisy latents (4), mouth mask (1), masked-face latents (4) and
    reference latents (4). ``encoder_hidden_states`` is the per-frame audio context ``(B * F, tokens, 384)``,
    batch-major. Output is the predicted noise ``(B, 4, F, h, w)``.

    Args:
        motion_modules: where temporal layers exist: ``"all"`` (v1.5/1.6 stage 2), ``"decoder"``
            (stage2_efficient) or ``"none"`` (stage 1, v1.0).
        frame_pooled_norm: reproduce the official normalisation (ResNet GroupNorm pooled over the frames of a clip,
            motion-module GroupNorm per frame). ``False`` gives stock diffusers behaviour.
        Other arguments are those of [`~diffusers.UNetMotionModel`].
    """

    # the blocks that regional compilation compiles (diffusers' convention, also used by compile_repeated_blocks):
    # ResNet blocks, spatial transformers (cross-attention to the audio) and motion modules
    _repeated_blocks = ("ResnetBlock2D", "Transformer2DModel", "AnimateDiffTransformer3D")

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = 64,
        in_channels: int = 13,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockMotion",
            "CrossAttnDownBlockMotion",
            "CrossAttnDownBlockMotion",
            "DownBlockMotion",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlockMotion",
            "CrossAttnUpBlockMotion",
            "CrossAttnUpBlockMotion",
            "CrossAttnUpBlockMotion",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 384,
        num_attention_heads: int | tuple[int, ...] = 8,
        motion_num_attention_heads: int | tuple[int, ...] = 8,
        motion_max_seq_length: int = 24,
        motion_modules: MotionPlacement = "all",
        frame_pooled_norm: bool = True,
    ):
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            num_attention_heads=num_attention_heads,
            motion_num_attention_heads=motion_num_attention_heads,
            motion_max_seq_length=motion_max_seq_length,
            use_motion_mid_block=False,
        )
        if motion_modules not in ("all", "decoder", "none"):
            raise ValueError(f"motion_modules must be 'all', 'decoder' or 'none', got {motion_modules!r}")
        removed = list(self.down_blocks) if motion_modules != "all" else []
        if motion_modules == "none":
            removed += list(self.up_blocks)
        for block in removed:
            block.motion_modules = nn.ModuleList(_NoMotion() for _ in block.motion_modules)

        self._frames = _FrameCount()
        if frame_pooled_norm:
            for module in list(self.modules()):
                for name, child in list(module.named_children()):
                    if isinstance(module, AnimateDiffTransformer3D) and name == "norm":
                        setattr(module, name, _swap_norm(child, PerFrameGroupNorm))
                    elif name in ("norm1", "norm2") and type(child) is nn.GroupNorm:
                        setattr(module, name, _swap_norm(child, FramePooledGroupNorm, frames=self._frames))
            self.conv_norm_out = _swap_norm(self.conv_norm_out, FramePooledGroupNorm, frames=self._frames)
        self.set_frame_masked_attention()

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # The saved config also lists the UNetMotionModel options this class fixes; drop them quietly on load.
        fixed = set(inspect.signature(UNetMotionModel.__init__).parameters) - set(inspect.signature(cls.__init__).parameters)
        config_dict = {k: v for k, v in config_dict.items() if k not in fixed}
        return super().extract_init_dict(config_dict, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype, as ``ModelMixin.dtype``; inside [`pinned_dtype`] the one looked up on entry."""
        if torch.compiler.is_compiling():  # diffusers' walk over the parameters breaks torch.compile's graph
            return self.conv_in.weight.dtype
        pinned = self.__dict__.get("_pinned_dtype")
        if pinned is not None:
            return pinned
        return ModelMixin.dtype.fget(self)

    @contextlib.contextmanager
    def pinned_dtype(self) -> Iterator[torch.dtype]:
        """Within it, [`dtype`] is the one looked up on entry: diffusers walks every parameter per lookup (2.5 ms at
        full size on a CPU) and ``forward`` asks once per call, so a sampling loop pins it. Nested pins keep the outer
        one; the dtype must not change inside."""
        if self.__dict__.get("_pinned_dtype") is not None:
            yield self.__dict__["_pinned_dtype"]
            return
        self.__dict__["_pinned_dtype"] = dtype = ModelMixin.dtype.fget(self)
        try:
            yield dtype
        finally:
            self.__dict__.pop("_pinned_dtype", None)

    @property
    def has_motion_modules(self) -> bool:
        return self.config.motion_modules != "none"

    def set_frame_masked_attention(self) -> None:
        """Give every temporal attention layer the [`FrameMaskedAttnProcessor`] (SDPA, as diffusers' default, that
        also honours ``frame_mask``). Done at construction; call it again after ``set_attn_processor``."""
        self._temporal_attention = tuple(attention_kinds(self)["temporal"])
        for layer in self._temporal_attention:
            layer.set_processor(FrameMaskedAttnProcessor(self._current_frame_mask))

    def _current_frame_mask(self) -> torch.Tensor | None:
        return self._frames.mask

    def set_fused_norm(self, enabled: bool = True) -> None:
        """Compute the frame-pooled GroupNorms with [`pooled_group_norm`] (no transposes, fewer and fused kernels;
        equal within float rounding) instead of the reference transpose + GroupNorm. Off by default, so that default
        outputs stay bit-identical; padded clips (``frame_mask``) always use it."""
        self._frames.fused = bool(enabled)

    @property
    def fused_norm(self) -> bool:
        return self._frames.fused

    def check_frame_mask(self, sample: torch.Tensor, frame_mask: torch.Tensor) -> None:
        """ValueError unless ``frame_mask`` ``(batch, frames)`` fits ``sample`` and this U-Net can skip padding."""
        if tuple(frame_mask.shape) != (sample.shape[0], sample.shape[2]):
            raise ValueError(f"frame_mask must be (batch, frames) = {(sample.shape[0], sample.shape[2])}, "
                             f"got {tuple(frame_mask.shape)}")
        if not self.config.frame_pooled_norm:
            raise ValueError("frame_mask needs frame_pooled_norm=True (diffusers' per-frame norms cannot skip "
                             "padding frames in the temporal layers)")
        if not all(isinstance(layer.processor, FrameMaskedAttnProcessor) for layer in self._temporal_attention):
            raise ValueError("frame_mask needs the frame-masked temporal attention: call "
                             "unet.set_frame_masked_attention() after changing the attention processors")

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                frame_mask: torch.Tensor | None = None, **kwargs):
        """The predicted noise, as ``UNetMotionModel.forward``. ``frame_mask`` ``(batch, frames)`` (bool, True for real
        frames) marks padding frames at the end of clips: the real frames' output then equals that of the unpadded
        clip (up to float rounding), since only the pooled norms and the temporal attention mix frames and both skip
        the padding. The padding frames' output is meaningless."""
        if sample.ndim != 5:
            raise ValueError(f"sample must be (batch, channels, frames, height, width), got shape {tuple(sample.shape)}")
        expected = sample.shape[0] * sample.shape[2]
        if encoder_hidden_states.shape[0] != expected:
            raise ValueError(
                f"encoder_hidden_states must hold one audio context per frame ({expected}), "
                f"got {encoder_hidden_states.shape[0]}"
            )
        if frame_mask is not None:
            self.check_frame_mask(sample, frame_mask)
            frame_mask = frame_mask.to(device=sample.device, dtype=torch.bool)
        self._frames.value = sample.shape[2]
        self._frames.mask = frame_mask
        try:
            return super().forward(sample, timestep, encoder_hidden_states, **kwargs)
        finally:
            self._frames.mask = None
