"""Evaluation tools: SyncNet accuracy, audio-visual offset / sync confidence (``latentsync eval ...``).

Subcommands live in [`latentsync.eval.cli.EVAL_COMMANDS`]; add new ones with [`register_eval_command`].
"""

from .cli import EVAL_COMMANDS, register_eval_command
from .sync_confidence import SyncEstimate, SyncNetV2, estimate_sync, load_sync_model, offset_confidence
from .syncnet_acc import SyncNetAccuracy, evaluate_syncnet
from .metrics import (
    FIDInceptionV3,
    I3DFeatureExtractor,
    frame_psnr,
    frame_ssim,
    frechet_distance,
    frechet_distance_from_features,
)
from .videos import VideoEvalConfig, evaluate_videos, write_report

__all__ = [
    "EVAL_COMMANDS",
    "FIDInceptionV3",
    "I3DFeatureExtractor",
    "VideoEvalConfig",
    "evaluate_videos",
    "frame_psnr",
    "frame_ssim",
    "frechet_distance",
    "frechet_distance_from_features",
    "write_report",
    "SyncEstimate",
    "SyncNetAccuracy",
    "SyncNetV2",
    "estimate_sync",
    "evaluate_syncnet",
    "load_sync_model",
    "offset_confidence",
    "register_eval_command",
]
