"""Settings of a data preparation run, the check of its folders, its summary, and the reasons material is dropped.

Importing this module does not import torch: the command line checks its options and folders with it first."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Literal

from ...errors import STORAGE_ERRNOS, InvalidOutputError, LatentSyncInputError
from ...media.audio import TRACK_MARGIN_DB
from ...media.constants import VIDEO_EXTENSIONS
from ...media.constants import VIDEO_FPS as FPS
from ...tempfiles import nearest_folder, writable_problem
from ..clips import PREPARE_MARKER

# Why material was dropped. Video-level reasons drop the whole file, clip-level ones a planned clip, frame-level
# ones frames that never became part of a clip.
DROP_REASONS = {
    "unreadable": "file cannot be decoded or has no video stream",
    "no_audio": "no audio stream, or one that cannot be decoded",
    "silent_audio": "audio track is silent",
    "error": "unexpected error while processing (see the state file)",
    "duplicate": "another name (a link) of a video in the folder, which is processed once",
    "no_face": "frames without a detected face",
    "too_short": "face runs / scenes shorter than min_seconds",
    "audio_ends_early": "video frames after the end of the audio track; a few at the end of a file are common",
    "sync_offset": "audio-visual offset beyond max_sync_offset",
    "low_sync_confidence": "SyncNet confidence below min_sync_confidence",
    "sync_failed": "SyncNet could not score the clip (shorter than its window)",
    "low_quality": "visual quality below the scorer's threshold",
}
VIDEO_REASONS = ("unreadable", "no_audio", "silent_audio", "error", "duplicate")
"""Reasons that drop a whole source video (their ``count`` counts videos)."""
FRAME_REASONS = ("no_face", "too_short", "audio_ends_early")
"""Reasons that drop frames that never became part of a clip (their ``count`` is 0: the amount is in ``seconds``);
the other reasons drop planned clips."""


def check_datasets_installed() -> None:
    """Refuse at once when ``datasets`` (the data extra), which writes the prepared dataset at the end, is missing:
    without this check the run processed every video first and then failed on the import."""
    if importlib.util.find_spec("datasets") is None:
        raise LatentSyncInputError("latentsync prepare writes a `datasets` dataset, and datasets is not installed: "
                                   "pip install 'latentsync[data]' (or pip install datasets)")


def drop_amount(reason: str, dropped: dict) -> str:
    """What a drop reason took, with its unit: ``3 videos``, ``2 clips`` or, for frame-level reasons, ``2 frames``."""
    if reason in FRAME_REASONS:
        n = round(dropped["seconds"] * FPS)
        return f"{n} frame{'s' * (n != 1)}"
    n = dropped["count"]
    return f"{n} {'video' if reason in VIDEO_REASONS else 'clip'}{'s' * (n != 1)}"


def _seconds(value: float) -> str:
    """Seconds for the summary table: to the frame (0.04 s) below one second, else to a tenth."""
    return f"{value:.2f}" if 0 < value < 1 else f"{value:.1f}"


@dataclass
class PrepareConfig:
    """Settings of a data preparation run (all but the worker count are part of the output's identity).

    Args:
        resolution: side of the aligned faces (256 for LatentSync 1.5, 512 for 1.6).
        min_seconds / max_seconds: clip length range (official 5-10 s).
        scene_threshold: PySceneDetect adaptive threshold (official ``detect-adaptive --threshold 2``).
        landmark_smoothing: Gaussian sigma (frames) applied to the face anchors within a clip; 0 disables.
        sync: estimate and correct the A/V offset with SyncNet and drop badly synced clips.
        syncnet: SyncNet for the sync step: a classic ``syncnet_v2.model`` file, a StableSyncNet folder / Hub id,
            or an official ``stable_syncnet.pt`` (None: ``auxiliary/syncnet_v2.model`` of ByteDance/LatentSync-1.5).
        syncnet_weights_name: file inside the ``syncnet`` folder / Hub repository to load.
        min_sync_confidence / max_sync_offset: keep a clip when its confidence is at least this and the absolute
            offset (frames) at most this (official 3 and 6 with the classic SyncNet). None: 3 for the classic
            SyncNet, 0.2 for a StableSyncNet (its cosine-distance confidences are on a smaller scale; this default
            is not calibrated on the released model, check the ``sync_confidence`` column of your data).
        quality: visual-quality scorer: ``auto``, ``sharpness``, ``hyperiqa``, ``hyperiqa:<repo or path>`` or a
            path to ``koniq_pretrained.pkl`` (see [`load_quality_scorer`]).
        quality_threshold: minimum score (default: the scorer's own, hyperIQA 40).
        crf: x264 quality of the written clips (official 13).
        max_shard_size: size of the dataset's shards.
    """

    resolution: Literal[256, 512] = 256
    min_seconds: float = 5.0
    max_seconds: float = 10.0
    scene_threshold: float = 2.0
    landmark_smoothing: float = 1.5
    sync: bool = True
    syncnet: str | None = None
    syncnet_weights_name: str | None = None
    min_sync_confidence: float | None = None
    max_sync_offset: int = 6
    quality: str = "auto"
    quality_threshold: float | None = None
    crf: int = 13
    max_shard_size: str = "500MB"

    def __post_init__(self):
        if self.resolution not in (256, 512):
            raise LatentSyncInputError(f"resolution must be 256 or 512, got {self.resolution}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise LatentSyncInputError(
                f"need 0 < min_seconds <= max_seconds, got {self.min_seconds} and {self.max_seconds}")

    @property
    def min_frames(self) -> int:
        return max(1, int(round(self.min_seconds * FPS)))

    @property
    def max_frames(self) -> int:
        return max(self.min_frames, int(round(self.max_seconds * FPS)))

    def identity(self) -> dict:
        """Settings that change the output (compared on resume)."""
        d = dataclasses.asdict(self)
        d.pop("max_shard_size")
        return d


# columns of dropped_clips.csv: every planned clip that a filter dropped, with the figures that decided
DROPPED_CLIP_COLUMNS = ("source", "start", "end", "num_frames", "reason", "sync_offset", "sync_confidence",
                        "quality_score")


# columns of dropped_videos.csv: every source video that gave no clip, the reason that took most of it, and in words
# what happened (the file's error, or the amount each reason took)
DROPPED_VIDEO_COLUMNS = ("source", "reason", "seconds", "detail")


class NoClipsKeptError(LatentSyncInputError):
    """Data preparation kept no clip (the summary, written beside, says why); ``summary`` holds it."""

    def __init__(self, message: str, summary: PrepareSummary):
        super().__init__(message)
        self.summary = summary


class PrepareStorageError(LatentSyncInputError):
    """A file of the run could not be written to the output folder (a full disk, a folder turned read-only): the
    message names the folder and the system's reason; the videos finished before it are kept in ``work/``."""


def storage_cause(exc: BaseException, folder: str | None = None) -> OSError | None:
    """The ``OSError`` of a disk or folder that cannot take files ([`STORAGE_ERRNOS`]) behind ``exc``: ``exc`` or
    one of its causes (``datasets`` and Ray wrap it in their own errors), or, for a video writer's
    [`InvalidOutputError`] (ffmpeg says why in words), one made from the reason it names, with ``folder`` as its
    file name; None when ``exc`` is another failure. A context that was suppressed (``raise ... from None``) is not
    followed: the error raised then is another failure."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error
        if isinstance(error, InvalidOutputError):
            number = next((n for n in STORAGE_ERRNOS if os.strerror(n) in str(error)), None)
            if number is not None:
                return OSError(number, os.strerror(number), folder)
        wrapped = getattr(error, "cause", None)  # Ray's RayTaskError holds the task's exception here
        error = (wrapped if isinstance(wrapped, BaseException) else None) or error.__cause__ or (
            None if error.__suppress_context__ else error.__context__)
    return None


def check_parallelism(num_workers: int | None, actors: int | None) -> None:
    """``--workers`` / ``num_workers`` and ``--actors`` / ``actors`` are counts: at least 1 when given.

    Raises:
        LatentSyncInputError: one line naming the option.
    """
    for name, value in (("--workers", num_workers), ("--actors", actors)):
        if value is not None and value < 1:
            raise LatentSyncInputError(f"{name} must be at least 1, got {value}")


def check_folders(input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """The input must be a folder, and the output a folder (or a path for one) outside it: inside the input, the
    output's clips would be found as raw videos by the next run, and its files mixed with the user's. An existing
    output folder must be empty (hidden files aside) or the output of an earlier run (resumed); the output folder
    (or, when missing, the nearest folder above it) must be writable, and no file may stand where a folder of its
    path is to be created.

    Raises:
        LatentSyncInputError: one line naming the problem.
    """
    source, target = os.path.realpath(input_dir), os.path.realpath(output_dir)
    if not os.path.isdir(source):
        raise LatentSyncInputError(f"input folder not found: {os.fspath(input_dir)}" if not os.path.exists(source)
                                   else f"the input {os.fspath(input_dir)} is a file: give the folder of raw videos")
    if os.path.exists(target) and not os.path.isdir(target):
        raise LatentSyncInputError(f"the output {os.fspath(output_dir)} is a file: give a folder")
    existing, blocker = nearest_folder(target)
    if blocker is not None:
        raise LatentSyncInputError(f"cannot create the output folder {os.fspath(output_dir)}: {blocker} is a file")
    problem = writable_problem(existing)
    if problem is not None:
        raise LatentSyncInputError(f"cannot write the output folder {os.fspath(output_dir)}: {existing} is not "
                                   f"writable ({problem})")
    if target == source or target.startswith(source.rstrip(os.sep) + os.sep):
        raise LatentSyncInputError(f"the output folder {os.fspath(output_dir)} is inside the input folder "
                                   f"{os.fspath(input_dir)}: the next run would read its clips as raw videos; give a "
                                   "folder outside it")
    if os.path.isdir(target) and not os.path.isfile(os.path.join(target, PREPARE_MARKER)):
        others = sorted(name for name in os.listdir(target) if not name.startswith("."))
        if others:  # not an earlier run's output: its dataset/ and summary files would replace the user's
            raise LatentSyncInputError(
                f"the output folder {os.fspath(output_dir)} holds other files ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}) and no earlier prepare run ({PREPARE_MARKER}): the run "
                "writes dataset/, work/ and summary files there, replacing any of those names; give a new or empty "
                "folder")


@dataclass
class PrepareSummary:
    """What a run kept and dropped. ``dropped`` maps a reason to ``{"count": items, "seconds": duration}`` (items:
    videos for [`VIDEO_REASONS`], clips for clip-level reasons, 0 for [`FRAME_REASONS`], which drop frames);
    ``dropped_clips`` lists every planned clip a filter dropped (see [`DROPPED_CLIP_COLUMNS`]); ``dropped_videos``
    every source video that gave no clip, with its reason (see [`DROPPED_VIDEO_COLUMNS`]); ``audio_tracks`` every
    source video with several audio tracks and the one its speech was read from (``source``, ``track`` numbered
    from 1, ``tracks``, ``levels_db``: see [`~latentsync.media.audio.SpeechTrack`]); ``other_files`` counts
    per ending the files of the input folder that were not read, their ending not being a video's; ``filters`` says
    for each filter (``scenes``, ``faces``, ``sync``, ``quality``) whether it ran, was skipped or fell back, and how."""

    videos: int = 0
    videos_done: int = 0
    videos_failed: int = 0
    clips: int = 0
    clip_seconds: float = 0.0
    source_seconds: float = 0.0
    dropped: dict = field(default_factory=dict)
    dropped_clips: list = field(default_factory=list)
    dropped_videos: list = field(default_factory=list)
    audio_tracks: list = field(default_factory=list)
    other_files: dict = field(default_factory=dict)
    filters: dict = field(default_factory=dict)
    dataset_path: str | None = None
    elapsed_seconds: float = 0.0

    def table(self, max_dropped_rows: int = 20) -> str:
        """Markdown: the filters, a table of kept and dropped material, the first videos that gave no clip and the
        first dropped clips."""
        lines = ["Filters:", ""]
        lines += [f"- {name}: **{f['status']}** - {f['detail']}" for name, f in self.filters.items()]
        head = (f"{self.videos} source videos ({self.source_seconds:.1f} s at 25 fps), {self.videos_done} processed, "
                f"{self.videos_failed} dropped whole")
        if self.other_files:
            n = sum(self.other_files.values())
            counts = ", ".join(f"{ending} {count}" for ending, count in self.other_files.items())
            head += (f"\n\nNot read: {n} other file{'s' * (n != 1)} of the input folder, by ending {counts} (a video "
                     f"among them is read once renamed to one of {', '.join(VIDEO_EXTENSIONS)})")
        lines += ["", head, "", "| | count | seconds |", "|---|---:|---:|",
                  f"| kept clips | {self.clips} | {self.clip_seconds:.1f} |"]
        for reason, d in sorted(self.dropped.items(), key=lambda kv: -kv[1]["seconds"]):
            lines.append(f"| dropped: {reason} ({DROP_REASONS.get(reason, '')}) | {drop_amount(reason, d)} | "
                         f"{_seconds(d['seconds'])} |")
        if self.dropped_videos:
            lines += ["", f"Videos that gave no clip ({len(self.dropped_videos)}; all of them in dropped_videos.csv):",
                      "", "| source | reason | detail |", "|---|---|---|"]
            for video in self.dropped_videos[:max_dropped_rows]:
                lines.append(f"| {_text_cell(video['source'])} | {video['reason']} | {_text_cell(video['detail'])} |")
            if len(self.dropped_videos) > max_dropped_rows:
                lines.append(f"| ... {len(self.dropped_videos) - max_dropped_rows} more | | |")
        if self.audio_tracks:
            lines += ["", (f"Videos with several audio tracks ({len(self.audio_tracks)}): the speech was read from "
                           "the track with the most speech-band sound (the first unless another is louder by more "
                           f"than {TRACK_MARGIN_DB:g} dB)"),
                      "", "| source | track used | speech-band level of each track (dB) |", "|---|---:|---|"]
            for video in self.audio_tracks[:max_dropped_rows]:
                levels = ", ".join("silent" if db is None else f"{db:.0f}" for db in video["levels_db"])
                lines.append(f"| {_text_cell(video['source'])} | {video['track']} of {video['tracks']} | {levels} |")
            if len(self.audio_tracks) > max_dropped_rows:
                lines.append(f"| ... {len(self.audio_tracks) - max_dropped_rows} more (summary.json) | | |")
        if self.dropped_clips:
            lines += ["", f"Dropped clips ({len(self.dropped_clips)}; all of them in dropped_clips.csv):", "",
                      "| " + " | ".join(DROPPED_CLIP_COLUMNS) + " |", "|" + "---|" * len(DROPPED_CLIP_COLUMNS)]
            for clip in self.dropped_clips[:max_dropped_rows]:
                lines.append("| " + " | ".join(_cell(clip.get(c)) for c in DROPPED_CLIP_COLUMNS) + " |")
            if len(self.dropped_clips) > max_dropped_rows:
                lines.append(f"| ... {len(self.dropped_clips) - max_dropped_rows} more | |")
        return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _text_cell(text: str) -> str:
    """Text for a Markdown table cell: one line, ``|`` escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")
