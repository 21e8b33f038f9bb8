"""Evaluation: SyncNet accuracy, audio-visual offset / sync confidence (LSE-C, LSE-D), and the video metrics of the
paper (PSNR, SSIM, FID, FVD) with their report. The ``latentsync eval`` command line is in
[`latentsync.commands.eval`].

The names below are imported on first use, so that ``latentsync.eval.config`` (the settings and checks the command
line runs before it loads torch) can be imported without the modules that need torch, diffusers and scipy.
"""

from __future__ import annotations

from typing import Any

from .._lazy import package_attribute

_HOMES = {
    "I3DFeatureExtractor": "metrics", "frame_psnr": "metrics", "frame_ssim": "metrics",
    "frechet_distance": "metrics", "frechet_distance_from_features": "metrics",
    "VideoEvalConfig": "config", "evaluate_videos": "videos", "write_report": "videos",
    "SyncEstimate": "sync_confidence", "estimate_sync": "sync_confidence", "load_sync_model": "sync_confidence",
    "offset_confidence": "sync_confidence",
    "SyncNetAccuracy": "syncnet_acc", "evaluate_syncnet": "syncnet_acc",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """``latentsync.eval.NAME``: imported from the module that holds it, on first use; names that lived here before
    the re-layout keep working for one release, with a deprecation warning."""
    return package_attribute(__name__, _HOMES, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
