"""Small helpers shared across the library: torch dtypes by name (device and dtype choice live in
[`latentsync.devices`], re-exported here), a stage timer, pixel normalisation, VAE latent scaling, runs of flags, and
reading weight files."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from .devices import DTYPE_NAMES, default_device, default_dtype, resolve_dtype  # noqa: F401 - their home is devices
from .tempfiles import write_atomically

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, attr) for name, attr in DTYPE_NAMES.items()}
"""Precision names accepted by the command line, the app and the configs -> torch dtypes."""


# ---------------------------------------------------------------------------------------------------- timing
class StageTimer:
    """Accumulates busy seconds per named stage (thread-safe): ``with timer("decode"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[stage] += elapsed

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds)


# ---------------------------------------------------------------------------------------------------- pixels
def frames_to_pixels(frames: np.ndarray) -> torch.Tensor:
    """RGB uint8 frames ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def pixels_to_frames(pixels: torch.Tensor) -> np.ndarray:
    """Float ``(N, 3, H, W)`` in [-1, 1] -> RGB uint8 frames ``(N, H, W, 3)`` (clamped and rounded)."""
    out = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return out.permute(0, 2, 3, 1).cpu().numpy()


# ---------------------------------------------------------------------------------------------------- latents
def scale_latents(latents: torch.Tensor, vae: Any) -> torch.Tensor:
    """VAE posterior latents -> the diffusion model's space: ``(latents - shift_factor) * scaling_factor``."""
    return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def unscale_latents(latents: torch.Tensor, vae: Any) -> torch.Tensor:
    """The inverse of [`scale_latents`]: what the VAE decoder takes."""
    return latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)


# ---------------------------------------------------------------------------------------------------- flags
def true_runs(flags: np.ndarray, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """``(first, last + 1)`` of every run of consecutive True values in ``flags[start:end]``."""
    end = len(flags) if end is None else end
    i = start
    while i < end:
        if not flags[i]:
            i += 1
            continue
        j = i
        while j < end and flags[j]:
            j += 1
        yield i, j
        i = j


# ---------------------------------------------------------------------------------------------------- files
def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file, or a PyTorch file read with ``weights_only=True`` (a nested
    ``{"state_dict": ...}`` is unwrapped)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def read_json(path: str | os.PathLike) -> Any:
    """The JSON data of ``path``, or None when the file does not exist."""
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def write_json_atomically(path: str | os.PathLike, data: Any, **kwargs: Any) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path`` and rename it: readers never see half a file."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, **kwargs)

    write_atomically(path, write)
