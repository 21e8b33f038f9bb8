"""latentsync: lip sync with audio-conditioned latent diffusion (LatentSync), native to the Hugging Face stack."""

from .errors import InvalidAudioError, InvalidVideoError, LatentSyncInputError, NoFaceError
from .models import LatentSyncUNet, WhisperAudioEncoder
from .pipeline import LatentSyncPipeline
from .pipeline_output import LatentSyncPipelineOutput

__version__ = "0.1.0"

__all__ = [
    "InvalidAudioError",
    "InvalidVideoError",
    "LatentSyncInputError",
    "LatentSyncPipeline",
    "LatentSyncPipelineOutput",
    "LatentSyncUNet",
    "NoFaceError",
    "WhisperAudioEncoder",
]
