"""Several 16-frame windows per U-Net call.

One window of 16 frames at 256 px is far too little work to keep a large GPU busy: each denoising step launches
hundreds of small kernels. Stacking the windows of a video (and the faces of several voices) along the U-Net's batch
axis gives the same arithmetic in fewer, larger launches. Windows are independent in LatentSync (every frame mixes
only with the frames of its own window, in the pooled norms and the temporal attention), so the result does not
depend on how many windows share a call, up to float rounding.

Windows shorter than the others (the video's last window, or frames where a face is missing) are padded to the full
length by repeating their last frame, and a ``frame_mask`` tells the U-Net which frames are real, so the padding has
no effect on them. A batch short of windows (the video's last one) can be padded with copies of its last window to
keep shapes fixed for a compiled U-Net; their output is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["MAX_WINDOWS_PER_BATCH", "WindowBatch", "stack_windows", "windows_that_fit"]

MAX_WINDOWS_PER_BATCH = 8
"""Upper bound of the automatic choice: beyond this the GPU is saturated and only memory grows."""


@dataclass
class WindowBatch:
    """The inputs of one U-Net call for several windows.

    Attributes:
        condition: conditioning channels ``(B, 9, F, h, w)``.
        audio: per-frame audio contexts ``(B * F, tokens, d)``, window-major.
        frame_mask: ``(B, F)`` bool, True for real frames; None when every frame is real.
        lengths: real frames of each window given to [`stack_windows`] (padding windows not included).
    """

    condition: torch.Tensor
    audio: torch.Tensor
    frame_mask: torch.Tensor | None
    lengths: list[int]

    def split(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """The real frames of each window, ``(1, C, f, h, w)``, from the batch's output ``(B, C, F, h, w)``."""
        return [latents[k : k + 1, :, :f] for k, f in enumerate(self.lengths)]


def _pad_frames(x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """``x`` extended along ``dim`` to ``length`` by repeating its last entry."""
    missing = length - x.shape[dim]
    if missing <= 0:
        return x
    last = x.narrow(dim, x.shape[dim] - 1, 1)
    return torch.cat([x, *([last] * missing)], dim=dim)


def stack_windows(conditions: Sequence[torch.Tensor], audios: Sequence[torch.Tensor], num_frames: int | None = None,
                  batch_size: int | None = None, always_mask: bool = False) -> WindowBatch:
    """Stack windows along the batch axis.

    Args:
        conditions: each window's conditioning channels ``(1, 9, f, h, w)``.
        audios: each window's audio contexts ``(f, tokens, d)``.
        num_frames: pad every window to this many frames (default: the longest window).
        batch_size: add copies of the last window up to this many windows (default: no padding windows).
        always_mask: give a ``frame_mask`` even when every frame is real (a compiled U-Net then sees one input
            signature for full and padded batches).

    A single window that needs no padding is passed through as it is (no mask), so one window per call is exactly
    the unbatched computation.
    """
    if not conditions or len(conditions) != len(audios):
        raise ValueError("stack_windows needs one audio context per window, and at least one window")
    lengths = [int(c.shape[2]) for c in conditions]
    frames = max(lengths) if num_frames is None else num_frames
    if max(lengths) > frames:
        raise ValueError(f"a window has {max(lengths)} frames, more than num_frames={frames}")
    count = max(batch_size or 0, len(conditions))
    padded_c = [_pad_frames(c, 2, frames) for c in conditions]
    padded_a = [_pad_frames(a, 0, frames) for a in audios]
    mask = torch.zeros(count, frames, dtype=torch.bool)
    for k, f in enumerate(lengths):
        mask[k, :f] = True
    mask[len(lengths) :] = mask[len(lengths) - 1]
    padded_c += [padded_c[-1]] * (count - len(lengths))
    padded_a += [padded_a[-1]] * (count - len(lengths))
    condition = padded_c[0] if count == 1 else torch.cat(padded_c)
    audio = padded_a[0] if count == 1 else torch.cat(padded_a)
    frame_mask = mask.to(condition.device) if always_mask or not bool(mask.all()) else None
    return WindowBatch(condition, audio, frame_mask, lengths)


def windows_that_fit(free_bytes: int, bytes_per_window: int, limit: int = MAX_WINDOWS_PER_BATCH,
                     headroom: float = 0.8) -> int:
    """How many windows one U-Net call can take: ``headroom`` of the free memory divided by what one more window
    needs, between 1 and ``limit``."""
    if bytes_per_window <= 0:
        return limit
    return max(1, min(limit, int(headroom * free_bytes // bytes_per_window)))
