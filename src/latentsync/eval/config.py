"""The settings of the evaluations that the command line reads and checks before anything heavy loads: the default
Hub files of the SyncNet and of the FVD backbone, the video metrics and their settings, and the report folder's check.

Importing this module imports neither torch nor the models (``latentsync eval --help`` and bad options answer at
once); the evaluations themselves are in [`latentsync.eval.videos`], [`latentsync.eval.metrics`] and
[`latentsync.eval.sync_confidence`].
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InvalidOutputError, LatentSyncInputError
from ..media.files import check_side_output

# the classic SyncNet of LSE-C / LSE-D and of the data preparation's sync filter (syncnet_python does not ship it)
OFFICIAL_SYNCNET_V2_REPO = "ByteDance/LatentSync-1.5"
OFFICIAL_SYNCNET_V2_FILE = "auxiliary/syncnet_v2.model"
# FVD's I3D backbone (TorchScript)
I3D_REPO_ID = "ByteDance/LatentSync-1.5"
I3D_FILENAME = "auxiliary/i3d_torchscript.pt"
ALL_METRICS = ("psnr", "ssim", "fid", "fvd", "sync")
REPORT_FILES = {"json": "metrics.json", "csv": "metrics.csv", "png": "summary.png", "html": "summary.html"}
SSIM_WINDOW = 11  # side of the SSIM window: smaller frames cannot be scored


@dataclass
class VideoEvalConfig:
    """Settings of [`latentsync.eval.videos.evaluate_videos`].

    Args:
        metrics: any of ``psnr``, ``ssim`` (need references with matching names), ``fid``, ``fvd`` (need
            references), ``sync`` (LSE-C / LSE-D of the generated videos).
        crop: ``face`` (square around the face, resized to ``crop_size``) or ``none`` (whole frames).
        crop_size: side of the face crops.
        fvd_frames / fvd_start / fvd_clips_per_video: FVD clips per video (official: one 16-frame clip from
            frame 20).
        max_frames: only the first frames of every video (None: all).
        batch_size: frames per backbone batch.
        sync_vshift: largest A/V offset tried, in frames.
        aligned: the generated videos already show aligned faces (training-style clips): the SyncNet skips face
            detection.
    """

    metrics: tuple[str, ...] = ALL_METRICS
    crop: str = "face"
    crop_size: int = 256
    fvd_frames: int = 16
    fvd_start: int = 20
    fvd_clips_per_video: int = 1
    max_frames: int | None = None
    batch_size: int = 32
    sync_vshift: int = 15
    aligned: bool = False

    def __post_init__(self):
        self.metrics = tuple(self.metrics)
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown:
            raise LatentSyncInputError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}")
        if self.crop not in ("face", "none"):
            raise LatentSyncInputError(f"crop must be 'face' or 'none', got {self.crop!r}")
        smallest = SSIM_WINDOW if "ssim" in self.metrics else 1
        if self.crop_size < smallest:
            raise LatentSyncInputError(f"crop size must be at least {smallest} pixels"
                                       f"{' (the SSIM window)' if smallest > 1 else ''}, got {self.crop_size}")
        for name, value, least in (("max frames", self.max_frames, 1), ("FVD frames", self.fvd_frames, 1),
                                   ("FVD start", self.fvd_start, 0), ("FVD clips", self.fvd_clips_per_video, 1),
                                   ("batch size", self.batch_size, 1), ("sync vshift", self.sync_vshift, 0)):
            if value is not None and value < least:
                raise LatentSyncInputError(f"{name} must be at least {least}, got {value}")


def check_report_output(output_dir: str, inputs: list[str] | tuple[str, ...] = ()) -> str:
    """``output_dir`` once the report may be written there (before the evaluation runs): a new or existing folder,
    not a file and not below one; the report's files may not be one of ``inputs``.

    Raises:
        InvalidOutputError: one line naming the problem.
    """
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise InvalidOutputError(f"--output {output_dir} is a file: give a folder for the report")
    for name in REPORT_FILES.values():
        check_side_output(os.path.join(output_dir, name), list(inputs), "--output")
    return output_dir
