"""SyncNet training and evaluation samples.

Clips are aligned talking faces at 25 fps with their (already A/V-synchronised) audio, from any source
[`~latentsync.data.clips.ClipSource`] reads: a folder of video files, a single video file, or a Hugging Face
``datasets`` dataset with mp4 bytes.

A sample is a window of ``num_frames`` frames and a Wav2Lip mel window. With probability ``positive_ratio`` both
start at the same frame (label 1, in sync); otherwise the frames come from another start of the same clip, at
least ``min_negative_offset`` frames away (label 0), as in the official code. ``time_range`` restricts every window
(frames and audio) to a fraction of each clip, e.g. ``(0, 0.7)`` to train on the first 70 % of every clip and
``(0.7, 1)`` to validate on the held-out rest.

Sample ``i`` depends only on ``(seed, index_offset + i)``, so a dataset is an endless, reproducible stream: the
trainer draws sample indices in order and resumes by offsetting them.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .._deprecation import moved_attribute
from ..audio_features.wav2lip_mel import mel_start, mel_window_length, wav2lip_mel
from ..errors import LatentSyncInputError
from ..media.audio import load_audio
from ..media.constants import VIDEO_FPS
from ..media.video import iter_frames
from ..utils import frames_to_pixels
from .clips import ClipSource, TrainingDataError

logger = logging.getLogger(__name__)


@dataclass
class SyncClip:
    """A decoded clip: frames ``(T, H, W, 3)`` uint8 at 25 fps (already cropped/resized) and its mel ``(80, M)``."""

    frames: np.ndarray
    mel: np.ndarray
    name: str


class ClipStore:
    """Indexable collection of aligned clips with an LRU cache of decoded clips.

    Args:
        source: folder of videos (searched recursively), one video file, a ``datasets.Dataset``/``DatasetDict``, a
            folder written by ``save_to_disk``, or anything ``datasets.load_dataset`` accepts (Hub id, parquet dir).
        resolution: side the aligned faces are resized to (None keeps the clip's size).
        lower_half: keep only the lower half of each face (the mouth), as the pixel SyncNets do.
        split, video_column: which split and column of a ``datasets`` source hold the clips.
        cache_size: decoded clips kept in memory.
    """

    def __init__(
        self,
        source: Any,
        resolution: int | None = 256,
        lower_half: bool = True,
        split: str = "train",
        video_column: str = "video",
        cache_size: int = 16,
    ):
        self.resolution, self.lower_half, self.video_column = resolution, lower_half, video_column
        self.cache_size = cache_size
        self.source = ClipSource(source, split, video_column)
        self._cache: collections.OrderedDict[int, SyncClip] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.source)

    def name(self, index: int) -> str:
        return self.source.name(index)

    def preload(self) -> None:
        """Decode every clip now and keep all of them (for small datasets)."""
        self.cache_size = max(self.cache_size, len(self))
        for i in range(len(self)):
            self.load(i)

    def load(self, index: int) -> SyncClip:
        """Decoded clip ``index`` (cached)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        with self.source.local_file(index) as path:
            clip = self._decode(path, self.name(index))
        if self.cache_size > 0:
            self._cache[index] = clip
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return clip

    def _decode(self, path: str, name: str) -> SyncClip:
        frames = []
        for frame in iter_frames(path, VIDEO_FPS):
            if self.resolution is not None and frame.shape[:2] != (self.resolution, self.resolution):
                frame = cv2.resize(frame, (self.resolution, self.resolution), interpolation=cv2.INTER_AREA)
            if self.lower_half:
                frame = frame[frame.shape[0] // 2 :]
            frames.append(np.ascontiguousarray(frame))
        if not frames:
            raise ValueError(f"no frames in {name}")
        mel = wav2lip_mel(load_audio(path))
        return SyncClip(np.stack(frames), mel, name)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(F, H, W, 3)`` -> float ``(F * 3, H, W)`` in [-1, 1], frames stacked frame-major on channels."""
    return frames_to_pixels(frames).flatten(0, 1)


class SyncNetDataset(Dataset):
    """Positive / negative (frames, mel) pairs from aligned clips.

    Returns dicts with ``frames`` ``(F*3, H, W)`` float in [-1, 1], ``mel`` ``(1, 80, ceil(3.2 F))``, ``label``
    (1.0 in sync, 0.0 not), ``offset`` (frame start minus audio start; 0 for positives) and ``clip`` (index).

    Args:
        clips: a [`ClipStore`] (or anything it accepts, opened with default settings).
        num_samples: length of the dataset (samples are drawn with replacement; any length works).
        num_frames: frames per window (16).
        time_range: fractions ``(start, end)`` of each clip that windows may use.
        positive_ratio: probability of an in-sync pair.
        min_negative_offset / max_negative_offset: allowed ``|frames start - audio start|`` for negatives (the
            official code uses any other start: 1 and None).
        hflip: flip every frame of a sample horizontally with probability 0.5 (sync-preserving augmentation).
        seed, index_offset: sample ``i`` is drawn from ``numpy.random.default_rng([seed, index_offset + i])``.
        max_tries: draws before giving up when clips are unreadable (skipped with a warning) or too short.
    """

    def __init__(
        self,
        clips: ClipStore | Any,
        num_samples: int,
        num_frames: int = 16,
        time_range: tuple[float, float] = (0.0, 1.0),
        positive_ratio: float = 0.5,
        min_negative_offset: int = 1,
        max_negative_offset: int | None = None,
        hflip: bool = False,
        seed: int = 0,
        index_offset: int = 0,
        max_tries: int = 50,
    ):
        self.clips = clips if isinstance(clips, ClipStore) else ClipStore(clips)
        if not 0.0 <= time_range[0] < time_range[1] <= 1.0:
            raise ValueError(f"time_range must satisfy 0 <= start < end <= 1, got {tuple(time_range)}")
        if min_negative_offset < 1:
            raise ValueError("min_negative_offset must be at least 1 frame")
        self.num_samples, self.num_frames = int(num_samples), num_frames
        self.time_range = (float(time_range[0]), float(time_range[1]))
        self.positive_ratio = positive_ratio
        self.min_negative_offset, self.max_negative_offset = min_negative_offset, max_negative_offset
        self.hflip, self.seed, self.index_offset, self.max_tries = hflip, seed, int(index_offset), max_tries
        self.mel_length = mel_window_length(num_frames)
        self._broken: set[int] = set()

    def __len__(self) -> int:
        return self.num_samples

    def valid_starts(self, clip: SyncClip) -> np.ndarray:
        """Start frames whose video window and mel window both lie inside the clip's ``time_range``."""
        n_frames = len(clip.frames)
        lo = int(np.ceil(self.time_range[0] * n_frames - 1e-9))
        hi = int(np.floor(self.time_range[1] * n_frames + 1e-9))  # exclusive end frame
        mel_end = min(clip.mel.shape[1], round(self.time_range[1] * clip.mel.shape[1]))
        starts = np.arange(lo, max(lo, hi - self.num_frames + 1))
        ok = np.array([mel_start(s) + self.mel_length <= mel_end for s in starts], dtype=bool)
        return starts[ok] if len(starts) else starts

    def _negative_start(self, starts: np.ndarray, audio_start: int, rng: np.random.Generator) -> int | None:
        diff = np.abs(starts - audio_start)
        ok = diff >= self.min_negative_offset
        if self.max_negative_offset is not None:
            ok &= diff <= self.max_negative_offset
        candidates = starts[ok]
        if len(candidates) == 0:
            return None
        return int(candidates[rng.integers(0, len(candidates))])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._draw(i)

    def check(self) -> None:
        """Draw the first sample as training would, so that clips too short for windows inside ``time_range`` are
        reported (a [`TrainingDataError`]) before a run starts rather than at its first use of this dataset."""
        if self.num_samples:
            self._draw(0)

    def _draw(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.index_offset + int(i)])
        for _ in range(self.max_tries):
            ci = int(rng.integers(0, len(self.clips)))
            try:
                clip = self.clips.load(ci)
            except (LatentSyncInputError, ValueError, OSError) as exc:  # a broken clip: draw another one
                if ci not in self._broken:
                    self._broken.add(ci)
                    logger.warning("skipping unreadable clip %s: %s", self.clips.name(ci), exc)
                continue
            starts = self.valid_starts(clip)
            if len(starts) == 0:
                continue
            audio_start = int(starts[rng.integers(0, len(starts))])
            positive = bool(rng.random() < self.positive_ratio)
            frame_start = audio_start if positive else self._negative_start(starts, audio_start, rng)
            if frame_start is None:
                continue
            frames = clip.frames[frame_start : frame_start + self.num_frames]
            if self.hflip and rng.random() < 0.5:
                frames = frames[:, :, ::-1]
            m0 = mel_start(audio_start)
            mel = torch.from_numpy(np.ascontiguousarray(clip.mel[:, m0 : m0 + self.mel_length]))[None]
            return {
                "frames": frames_to_tensor(frames),
                "mel": mel,
                "label": torch.tensor(1.0 if positive else 0.0),
                "offset": frame_start - audio_start,
                "clip": ci,
            }
        raise TrainingDataError(
            f"could not draw a sample in {self.max_tries} tries: clips are unreadable or too short for "
            f"{self.num_frames}-frame windows (with negatives) inside time_range {self.time_range}"
        )


def __getattr__(name: str) -> Any:
    """Names that lived here before the re-layout keep working for one release, with a deprecation warning."""
    return moved_attribute(__name__, name)
