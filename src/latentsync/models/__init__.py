"""Every network of the library, each a diffusers ``ModelMixin`` / ``ConfigMixin`` (or transformers model) with
``save_pretrained`` / ``from_pretrained``: the LatentSync U-Net and its DeepCache runner, the Whisper audio
encoder, the SyncNets (StableSyncNet, classic SyncNet v2), and the networks of the losses and metrics (VGG-16 for
LPIPS, the FID Inception, hyperIQA)."""

import logging

from .audio_encoder import WhisperAudioEncoder
from .deep_cache import UNetFeatureCache
from .hyperiqa import HyperIQA
from .inception import FID_WEIGHTS_URL, FIDInceptionV3
from .syncnet import SYNCNET_CONFIGS, StableSyncNet, syncnet_bce_loss, syncnet_cosine
from .syncnet_v2 import SyncNetV2
from .unet import LatentSyncUNet
from .vgg import VGG16_HUB_ID, VGG16Features

__all__ = [
    "FID_WEIGHTS_URL",
    "SYNCNET_CONFIGS",
    "VGG16_HUB_ID",
    "FIDInceptionV3",
    "HyperIQA",
    "LatentSyncUNet",
    "StableSyncNet",
    "SyncNetV2",
    "UNetFeatureCache",
    "VGG16Features",
    "WhisperAudioEncoder",
    "syncnet_bce_loss",
    "syncnet_cosine",
]


class _EmptyFloat32Notice(logging.Filter):
    """diffusers warns on every ``model.to(dtype)`` that the model has modules to keep in float32, even when the
    list it prints is empty (none to keep); the notice with a non-empty list still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_EmptyFloat32Notice())
