"""DeepCache-style feature caching for the LatentSync U-Net (Ma et al., "DeepCache", 2023).

Deep U-Net features change slowly between neighbouring denoising steps. Every ``interval`` steps
[`UNetFeatureCache`] runs the whole U-Net and keeps the feature that enters the shallowest up-sampling layers; on
the steps in between it runs only the shallow branch -- ``conv_in``, the first ``branch + 1`` down-sampling layers
and the last ``branch + 2`` up-sampling layers, which consume those layers' skip connections -- and takes the deep
part from the cache. ``branch=0`` is the shallowest (and fastest) branch; larger values recompute more.

The layer-by-layer pass below performs the same operations in the same order as
[`~diffusers.UNetMotionModel.forward`], so a full pass gives bit-identical results (``interval=1`` equals the
plain U-Net).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNetMotionModel
from diffusers.utils.torch_utils import apply_freeu, maybe_adjust_dtype_for_device
from torch import nn

__all__ = ["UNetFeatureCache"]


@dataclass
class _Layer:
    """One skip-connection unit of the U-Net: a (resnet, attention?, motion) layer or a resampler."""

    block: nn.Module
    index: int  # layer index inside the block, or -1 for the block's down/up-sampler


def _is_freeu_enabled(block: nn.Module) -> bool:
    return bool(all(getattr(block, name, None) for name in ("s1", "s2", "b1", "b2")))


class UNetFeatureCache:
    """Runs a [`~diffusers.UNetMotionModel`] (e.g. [`LatentSyncUNet`]) with DeepCache feature reuse.

    Call it once per denoising step, in order, with the step's index; call [`reset`] before a new sample.

    Args:
        unet: the U-Net.
        interval: a full pass every ``interval`` steps (``1`` = always, i.e. no caching; DeepCache uses 3).
        branch: depth of the branch recomputed on cached steps, ``0`` (shallowest) to ``max_branch(unet)``.

    Attributes:
        full_passes / shallow_passes: number of passes of each kind run so far.
    """

    def __init__(self, unet: UNetMotionModel, interval: int = 3, branch: int = 0):
        if interval < 1:
            raise ValueError(f"deep cache interval must be >= 1, got {interval}")
        max_branch = self.max_branch(unet)
        if not 0 <= branch <= max_branch:
            raise ValueError(f"deep cache branch must be between 0 and {max_branch} for this U-Net, got {branch}")
        self.unet = unet
        self.interval = interval
        self.branch = branch
        self.full_passes = 0
        self.shallow_passes = 0
        self._down = self._down_units(unet)
        self._up = self._up_layers(unet)
        self._num_shallow = branch + 2  # skip connections computed by the shallow branch (conv_in included)
        self._cached: torch.Tensor | None = None

    # ------------------------------------------------------------------ structure
    @staticmethod
    def _down_units(unet: UNetMotionModel) -> list[_Layer]:
        """Down-path units after ``conv_in``, each producing one skip connection, shallowest first."""
        units = []
        for block in unet.down_blocks:
            units += [_Layer(block, i) for i in range(len(block.resnets))]
            if block.downsamplers is not None:
                units.append(_Layer(block, -1))
        return units

    @staticmethod
    def _up_layers(unet: UNetMotionModel) -> list[_Layer]:
        """Up-path layers, each consuming one skip connection, deepest first (execution order)."""
        return [_Layer(block, i) for block in unet.up_blocks for i in range(len(block.resnets))]

    @classmethod
    def max_branch(cls, unet: UNetMotionModel) -> int:
        """Deepest usable branch: every skip connection recomputed, only the middle block cached."""
        return len(cls._down_units(unet)) - 1

    # ------------------------------------------------------------------ use
    def reset(self) -> None:
        """Forget the cached features (call before denoising a new sample)."""
        self._cached = None

    def is_full_step(self, step: int) -> bool:
        """Whether denoising step ``step`` (0-based) runs the whole U-Net."""
        return self._cached is None or step % self.interval == 0

    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, step: int,
                 frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise ``(B, C, F, h, w)`` for denoising step ``step``, like ``unet(...).sample``; ``frame_mask``
        marks the real frames of padded clips, as in [`LatentSyncUNet.forward`]."""
        unet = self.unet
        if sample.ndim != 5:
            raise ValueError(f"sample must be (batch, channels, frames, height, width), got shape {tuple(sample.shape)}")
        if encoder_hidden_states.shape[0] != sample.shape[0] * sample.shape[2]:
            raise ValueError("encoder_hidden_states must hold one context per frame of every clip")
        if getattr(unet.config, "addition_embed_type", None) or getattr(unet, "encoder_hid_proj", None) is not None:
            raise NotImplementedError("deep cache supports U-Nets without added embeddings only")
        hook = getattr(unet, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):  # accelerate CPU offload: bring the weights in
            hook.pre_forward(unet)
        full = self.is_full_step(step)
        if frame_mask is not None:
            if not hasattr(unet, "_frames"):
                raise ValueError("frame_mask needs a LatentSyncUNet (frame-aware norms and temporal attention)")
            unet.check_frame_mask(sample, frame_mask)
            unet._frames.mask = frame_mask.to(device=sample.device, dtype=torch.bool)
        try:
            out = self._forward(sample, timestep, encoder_hidden_states, full)
        finally:
            if frame_mask is not None:
                unet._frames.mask = None
        if full:
            self.full_passes += 1
        else:
            self.shallow_passes += 1
        return out

    # ------------------------------------------------------------------ the pass
    def _forward(self, sample: torch.Tensor, timestep, context: torch.Tensor, full: bool) -> torch.Tensor:
        unet = self.unet
        batch, _, num_frames = sample.shape[:3]
        if hasattr(unet, "_frames"):  # LatentSyncUNet's frame-pooled norms need the clip length
            unet._frames.value = num_frames
        forward_upsample_size = any(s % 2**unet.num_upsamplers != 0 for s in sample.shape[-2:])

        # 1. time embedding, exactly as UNetMotionModel.forward
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = maybe_adjust_dtype_for_device(torch.float64 if isinstance(timestep, float) else torch.int64,
                                                  sample.device)
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif len(timesteps.shape) == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(batch)
        emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=unet.dtype), None)
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)

        # 2. conv_in and the down path (all of it, or the shallow branch)
        h = sample.permute(0, 2, 1, 3, 4).reshape((batch * num_frames, -1) + sample.shape[3:])
        h = unet.conv_in(h)
        skips = [h]
        down = self._down if full else self._down[: self._num_shallow - 1]
        for unit in down:
            h = self._down_unit(unit, h, emb, context, num_frames)
            skips.append(h)

        # 3. middle block and the deep up layers (full pass), or the cached feature
        first_shallow = len(self._up) - self._num_shallow
        if full:
            if unet.mid_block is not None:
                if hasattr(unet.mid_block, "motion_modules"):
                    h = unet.mid_block(h, emb, encoder_hidden_states=context, attention_mask=None,
                                       num_frames=num_frames, cross_attention_kwargs=None)
                else:
                    h = unet.mid_block(h, emb, encoder_hidden_states=context, attention_mask=None,
                                       cross_attention_kwargs=None)
            layers = self._up
        else:
            h = self._cached
            layers = self._up[first_shallow:]
            if h is None or h.shape[0] != batch * num_frames:
                raise RuntimeError("deep cache has no features for this input: run a full step first")

        # 4. up path
        for k, layer in enumerate(layers, start=0 if full else first_shallow):
            if full and k == first_shallow:
                self._cached = h
            block = layer.block
            res = skips.pop()
            if _is_freeu_enabled(block):
                h, res = apply_freeu(block.resolution_idx, h, res, s1=block.s1, s2=block.s2, b1=block.b1, b2=block.b2)
            h = torch.cat([h, res], dim=1)
            h = block.resnets[layer.index](input_tensor=h, temb=emb)
            if hasattr(block, "attentions"):
                h = block.attentions[layer.index](hidden_states=h, encoder_hidden_states=context,
                                                  cross_attention_kwargs=None, attention_mask=None,
                                                  encoder_attention_mask=None, return_dict=False)[0]
            h = block.motion_modules[layer.index](h, num_frames=num_frames)
            if layer.index == len(block.resnets) - 1 and block.upsamplers is not None:
                is_final = block is unet.up_blocks[-1]
                size = skips[-1].shape[2:] if forward_upsample_size and not is_final else None
                for upsampler in block.upsamplers:
                    h = upsampler(hidden_states=h, output_size=size)

        # 5. post-process
        if unet.conv_norm_out:
            h = unet.conv_act(unet.conv_norm_out(h))
        h = unet.conv_out(h)
        return h[None, :].reshape((-1, num_frames) + h.shape[1:]).permute(0, 2, 1, 3, 4)

    @staticmethod
    def _down_unit(unit: _Layer, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, num_frames: int):
        block = unit.block
        if unit.index < 0:
            for downsampler in block.downsamplers:
                h = downsampler(hidden_states=h)
            return h
        h = block.resnets[unit.index](input_tensor=h, temb=emb)
        if hasattr(block, "attentions"):
            h = block.attentions[unit.index](hidden_states=h, encoder_hidden_states=context,
                                             cross_attention_kwargs=None, attention_mask=None,
                                             encoder_attention_mask=None, return_dict=False)[0]
        return block.motion_modules[unit.index](h, num_frames=num_frames)
