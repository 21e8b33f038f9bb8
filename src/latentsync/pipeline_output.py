"""The result of a [`LatentSyncPipeline`] call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

if TYPE_CHECKING:
    from .face.selection import ShotFaces


@dataclass
class LatentSyncPipelineOutput(BaseOutput):
    """Result of a [`LatentSyncPipeline`] call.

    Args:
        frames: the output frames when they are returned (see ``output_type``): an RGB uint8 array
            ``(N, H, W, 3)`` (``"np"``), a list of PIL images (``"pil"``) or a float tensor ``(N, 3, H, W)`` in
            [0, 1] (``"pt"``); None when only a file was written. A call makes one video, so unlike diffusers' video
            pipelines (a batch: ``frames[0]`` is the first video) these are the video's frames; for diffusers'
            ``export_to_video`` pass ``output_type="pil"`` frames (it scales NumPy frames by 255, as if they were
            floats) or, better, write with ``output_path``, which keeps the sound.
        fps: frame rate of the output: 25 (the model's rate) by default, ``output_fps`` when given, the input's
            typical rate with ``output_fps="input"``.
        path: written video file, or None.
        num_frames: number of output frames.
        frames_without_face: output frames passed through unchanged because no face was found in them.
        timings: busy seconds per stage (stages may overlap in time) and ``total`` wall-clock seconds.
        faces: per shot of the video, which face track was lip-synced and why, with every track's speaking score
            when ``face="speaking"`` ([`~latentsync.face.selection.ShotFaces`]).
        timestamps: the time (seconds) of every output frame when the output is not on the 25 fps timeline
            (``output_fps="input"`` or another rate); None otherwise (frame ``i`` at ``i / 25``).
    """

    frames: np.ndarray | list[PIL.Image.Image] | torch.Tensor | None
    fps: float
    path: str | None
    num_frames: int
    frames_without_face: int
    timings: dict[str, float] = field(default_factory=dict)
    faces: list[ShotFaces] | None = None
    timestamps: np.ndarray | None = None
