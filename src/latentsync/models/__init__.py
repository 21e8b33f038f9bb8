from .audio_encoder import WhisperAudioEncoder
from .syncnet import SYNCNET_CONFIGS, StableSyncNet, syncnet_bce_loss
from .unet import LatentSyncUNet

__all__ = ["SYNCNET_CONFIGS", "LatentSyncUNet", "StableSyncNet", "WhisperAudioEncoder", "syncnet_bce_loss"]
