"""latentsync: lip sync with audio-conditioned latent diffusion (LatentSync), native to the Hugging Face stack.

The pipeline and the models are imported on first use (``from latentsync import LatentSyncPipeline`` works as
usual), so that ``import latentsync`` and the command line's ``--help`` and input checks do not wait seconds for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    DeviceError,
    InvalidAudioError,
    InvalidOutputError,
    InvalidVideoError,
    LatentSyncInputError,
    ModelNotFoundError,
    NoFaceError,
    RunInterrupted,
)

if TYPE_CHECKING:
    from .models import LatentSyncUNet, WhisperAudioEncoder
    from .pipeline import LatentSyncPipeline
    from .pipeline_output import LatentSyncPipelineOutput

__version__ = "0.1.0"

# name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "LatentSyncPipeline": "latentsync.pipeline",
    "LatentSyncPipelineOutput": "latentsync.pipeline_output",
    "LatentSyncUNet": "latentsync.models",
    "WhisperAudioEncoder": "latentsync.models",
}

__all__ = [
    "DeviceError",
    "InvalidAudioError",
    "InvalidOutputError",
    "InvalidVideoError",
    "LatentSyncInputError",
    "LatentSyncPipeline",
    "LatentSyncPipelineOutput",
    "LatentSyncUNet",
    "ModelNotFoundError",
    "NoFaceError",
    "RunInterrupted",
    "WhisperAudioEncoder",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
