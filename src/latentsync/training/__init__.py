"""Training of the LatentSync U-Net (stage 1 and stage 2) and of the SyncNet, with accelerate.

``config`` holds the settings (a shared [`TrainingConfig`] that both trainers' configs extend), ``base`` what both
trainers do the same way (accelerator, optimiser step, atomic checkpoints, loss log), ``components`` and
``losses`` the U-Net's models and losses, ``unet_trainer`` and ``syncnet_trainer`` the two training loops.

The names below are imported on first use, so that ``latentsync.training.config`` (the settings the training
scripts read and check before they load torch) can be imported without the modules that need torch.
"""

from __future__ import annotations

from typing import Any

from .._lazy import package_attribute

_HOMES = {
    "SyncNetTrainingConfig": "config", "TrainingConfig": "config", "UNetTrainingConfig": "config",
    "load_config": "config", "load_settings": "config", "load_syncnet_config": "config",
    "LPIPSLoss": "losses", "SyncLoss": "losses", "TREPALoss": "losses", "VGG16Features": "losses",
    "lower_half": "losses", "mixed_noise": "losses", "predict_x0": "losses",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """``latentsync.training.NAME``: imported from the module that holds it, on first use."""
    return package_attribute(__name__, _HOMES, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
