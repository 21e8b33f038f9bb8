"""Training of the LatentSync U-Net (stage 1 and stage 2) and of the SyncNet, with accelerate.

``config`` holds the settings (a shared [`TrainingConfig`] that both trainers' configs extend), ``base`` what both
trainers do the same way (accelerator, optimiser step, atomic checkpoints, loss log), ``components`` and
``losses`` the U-Net's models and losses, ``unet_trainer`` and ``syncnet_trainer`` the two training loops.
"""

from .config import (
    SyncNetTrainingConfig,
    TrainingConfig,
    UNetTrainingConfig,
    load_config,
    load_settings,
    load_syncnet_config,
)
from .losses import LPIPSLoss, SyncLoss, TREPALoss, VGG16Features, lower_half, mixed_noise, predict_x0

__all__ = [
    "LPIPSLoss",
    "SyncLoss",
    "SyncNetTrainingConfig",
    "TREPALoss",
    "TrainingConfig",
    "UNetTrainingConfig",
    "VGG16Features",
    "load_config",
    "load_settings",
    "load_syncnet_config",
    "lower_half",
    "mixed_noise",
    "predict_x0",
]
