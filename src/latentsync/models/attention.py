"""Attention of the LatentSync U-Net: the temporal attention that ignores padding frames, and a report of which
attention kernels every layer uses.

Every attention of the U-Net (spatial self-attention, audio cross-attention and the temporal self-attention of the
motion modules) runs through PyTorch's ``scaled_dot_product_attention`` (diffusers' ``AttnProcessor2_0``), which
picks a fused kernel (FlashAttention, memory-efficient or cuDNN attention) on a GPU and falls back to the plain
"math" kernel only when none of them supports the inputs. [`attention_report`] lists the processors per kind of
attention and, on CUDA, checks that every call can run on a fused kernel.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

__all__ = ["FrameMaskedAttnProcessor", "attention_kinds", "attention_report"]

SDPA_PROCESSORS = ("AttnProcessor2_0", "FrameMaskedAttnProcessor")
"""Processors that compute attention with ``torch.nn.functional.scaled_dot_product_attention``."""


class FrameMaskedAttnProcessor(AttnProcessor2_0):
    """SDPA attention over the frames of a clip that ignores the clip's padding frames.

    ``mask_source()`` returns None (plain attention, exactly ``AttnProcessor2_0``) or a ``(clips, frames)`` bool
    tensor, True for real frames. The temporal layers see ``(clips * pixels, frames, channels)`` sequences, clip-major;
    with a mask every query attends only to the real frames of its clip, so the real frames come out as if the clip
    had not been padded.
    """

    def __init__(self, mask_source: Callable[[], torch.Tensor | None]):
        super().__init__()
        self._mask_source = mask_source

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        mask = self._mask_source()
        if mask is not None and attention_mask is None and encoder_hidden_states is None:
            clips, frames = mask.shape
            rows = hidden_states.shape[0]
            # (clips, frames) -> one row per sequence, (rows, 1, frames): every query of a sequence sees the same keys
            attention_mask = mask[:, None, :].expand(clips, rows // clips, frames).reshape(rows, 1, frames)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


def attention_kinds(unet: nn.Module) -> dict[str, list[Attention]]:
    """The U-Net's attention layers by kind: ``"spatial"`` (self-attention over the pixels of a frame), ``"audio"``
    (cross-attention to the audio context) and ``"temporal"`` (self-attention over the frames of a clip)."""
    kinds: dict[str, list[Attention]] = {"spatial": [], "audio": [], "temporal": []}
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        if ".motion_modules." in f".{name}":
            kinds["temporal"].append(module)
        elif module.is_cross_attention:
            kinds["audio"].append(module)
        else:
            kinds["spatial"].append(module)
    return kinds


def attention_report(unet: nn.Module, run: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Which processor each kind of attention uses, and whether all of them compute with SDPA.

    With ``run`` (a callable that runs the U-Net once, e.g. on a zero input of the real shape) on a CUDA device, the
    call is repeated with SDPA restricted to the fused kernels (FlashAttention, memory-efficient, cuDNN):
    ``fused_kernels_only`` is True when every attention call found one, False (with ``fused_kernels_error``) when some
    call would have fallen back to the slow math kernel.
    """
    report: dict[str, Any] = {}
    all_sdpa = True
    for kind, layers in attention_kinds(unet).items():
        names = Counter(type(layer.processor).__name__ for layer in layers)
        report[kind] = dict(names)
        all_sdpa &= all(name in SDPA_PROCESSORS for name in names)
    report["all_sdpa"] = all_sdpa
    device = next(unet.parameters()).device
    if run is not None and device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel  # deferred: only needed for this CUDA check

        fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
        try:
            with sdpa_kernel(fused):
                run()
            report["fused_kernels_only"] = True
        except RuntimeError as exc:
            report["fused_kernels_only"] = False
            report["fused_kernels_error"] = str(exc).splitlines()[0]
    return report
