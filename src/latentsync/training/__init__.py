"""Training of the LatentSync U-Net (stage 1 and stage 2) with accelerate."""

from .config import UNetTrainingConfig, load_config
from .losses import LPIPSLoss, SyncLoss, TREPALoss, VGG16Features, lower_half, mixed_noise, predict_x0

__all__ = [
    "LPIPSLoss",
    "SyncLoss",
    "TREPALoss",
    "UNetTrainingConfig",
    "VGG16Features",
    "load_config",
    "lower_half",
    "mixed_noise",
    "predict_x0",
]
