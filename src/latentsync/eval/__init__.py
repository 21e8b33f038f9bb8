"""Evaluation: SyncNet accuracy, audio-visual offset / sync confidence (LSE-C, LSE-D), and the video metrics of the
paper (PSNR, SSIM, FID, FVD) with their report. The ``latentsync eval`` command line is in
[`latentsync.commands.eval`]."""

from typing import Any

from .._deprecation import moved_attribute
from .metrics import (
    I3DFeatureExtractor,
    frame_psnr,
    frame_ssim,
    frechet_distance,
    frechet_distance_from_features,
)
from .sync_confidence import SyncEstimate, estimate_sync, load_sync_model, offset_confidence
from .syncnet_acc import SyncNetAccuracy, evaluate_syncnet
from .videos import VideoEvalConfig, evaluate_videos, write_report

__all__ = [
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
    "estimate_sync",
    "evaluate_syncnet",
    "load_sync_model",
    "offset_confidence",
]


def __getattr__(name: str) -> Any:
    """Names that lived here before the re-layout keep working for one release, with a deprecation warning."""
    return moved_attribute(__name__, name)
