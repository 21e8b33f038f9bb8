from .audio_encoder import WhisperAudioEncoder
from .unet import LatentSyncUNet

__all__ = ["LatentSyncUNet", "WhisperAudioEncoder"]
