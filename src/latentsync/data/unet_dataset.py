"""Training samples for the LatentSync U-Net.

Reads aligned talking-face clips (25 fps, face already aligned to the template, 16 kHz audio) from any source
[`~latentsync.data.clips.ClipSource`] reads (a folder of videos or a Hugging Face dataset with mp4 bytes). Each
sample is a ``num_frames`` window of ground-truth frames plus a reference window of the same clip at a
non-overlapping position (the model learns to copy identity from the reference, not the mouth).

Randomness is a function of ``(seed, epoch, index)`` only, so a resumed run sees exactly the samples an
uninterrupted run would. The sampler [`EpochSampler`] encodes the epoch in the index it yields.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..audio_features.wav2lip_mel import mel_window, num_mel_windows, wav2lip_mel
from ..media.audio import load_audio
from ..media.constants import VIDEO_FPS
from ..media.video import iter_frames
from ..utils import frames_to_pixels
from .clips import ClipSource, TrainingDataError

logger = logging.getLogger(__name__)


class UNetClipDataset(Dataset):
    """Aligned clips -> ``{"gt", "ref", "clip_index", "start"[, "mel"]}``.

    Args:
        source: folder of aligned clips, a ``datasets.Dataset``, or a path/id loadable by ``datasets``.
        resolution: side of the returned faces (frames are resized when the clip differs).
        num_frames: frames per window (16).
        split, video_column: for datasets sources.
        return_mel: also return the SyncNet mel window ``(1, 80, 52)`` (stage 2).
        seed: base of the per-sample random generator.
        cache_clips: keep this many decoded clips in memory (0 = decode every time).
        max_retries: a clip that is unreadable or too short is replaced by the next one, at most this many times.
    """

    def __init__(
        self,
        source: Any,
        resolution: int = 256,
        num_frames: int = 16,
        split: str = "train",
        video_column: str = "video",
        return_mel: bool = False,
        seed: int = 0,
        cache_clips: int = 0,
        max_retries: int = 20,
    ):
        self.resolution, self.num_frames = resolution, num_frames
        self.return_mel, self.seed = return_mel, seed
        self.video_column, self.max_retries = video_column, max_retries
        self.source = ClipSource(source, split, video_column)
        self._cache: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._cache_size = cache_clips

    def __len__(self) -> int:
        return len(self.source)

    def key(self, index: int) -> str:
        """Stable name of clip ``index`` (file path, or dataset fingerprint + row)."""
        return self.source.key(index)

    # ------------------------------------------------------------------ decoding
    def load_clip(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``(T, R, R, 3)`` uint8 at 25 fps and 16 kHz mono audio of clip ``index``."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        with self.source.local_file(index) as path:
            clip = self._decode(path)
        if self._cache_size > 0:
            self._cache[index] = clip
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return clip

    def load_audio(self, index: int) -> np.ndarray:
        """16 kHz mono audio of clip ``index``."""
        return self.load_clip(index)[1]

    def _decode(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        r = self.resolution
        frames = []
        for frame in iter_frames(path, VIDEO_FPS):
            if frame.shape[:2] != (r, r):
                frame = cv2.resize(frame, (r, r), interpolation=cv2.INTER_AREA)
            frames.append(frame)
        if not frames:
            raise ValueError(f"no frames in {path}")
        return np.stack(frames), load_audio(path)

    # ------------------------------------------------------------------ sampling
    def windows(self, num_total: int, rng: np.random.Generator, max_start: int | None = None) -> tuple[int, int]:
        """Start of the ground-truth window (at most ``max_start``) and of a non-overlapping reference window."""
        f = self.num_frames
        if num_total < 2 * f:
            raise ValueError(f"clip has {num_total} frames, needs at least {2 * f}")
        last = num_total - f if max_start is None else min(num_total - f, max_start)
        if last < 0:
            raise ValueError("the audio is too short for any training window")
        start = int(rng.integers(0, last + 1))
        candidates = [r for r in range(num_total - f + 1) if abs(r - start) >= f]
        return start, int(candidates[rng.integers(0, len(candidates))])

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self._draw(item)

    def check(self) -> None:
        """Draw the first sample as training would, so that clips too short for ``num_frames`` windows (or unreadable
        ones) are reported (a [`TrainingDataError`]) before a run loads its models rather than at its first step."""
        self._draw(0)

    def _draw(self, item: int) -> dict[str, Any]:
        n = len(self)
        epoch, index = divmod(int(item), n)
        last_error: Exception | None = None
        attempts = min(self.max_retries + 1, n)  # each clip once at most: a short list is not tried round and round
        for attempt in range(attempts):
            idx = (index + attempt) % n
            rng = np.random.default_rng([self.seed, epoch, idx])
            try:
                frames, samples = self.load_clip(idx)
                mel, max_start = None, None
                if self.return_mel:
                    mel = wav2lip_mel(samples)
                    max_start = num_mel_windows(mel.shape[-1], self.num_frames) - 1
                start, ref_start = self.windows(len(frames), rng, max_start)
                sample = {
                    "gt": frames_to_pixels(frames[start : start + self.num_frames]),
                    "ref": frames_to_pixels(frames[ref_start : ref_start + self.num_frames]),
                    "clip_index": idx,
                    "start": start,
                }
                if mel is not None:
                    sample["mel"] = self._mel(mel, start)
                return sample
            except (ValueError, OSError, RuntimeError) as exc:
                logger.warning("skipping clip %s: %s", self.key(idx), exc)
                last_error = exc
        which = "the only clip" if n == 1 else f"all {n} clips" if attempts == n else f"{attempts} clips in a row"
        raise TrainingDataError(f"{which} could not be used (unreadable, or shorter than {2 * self.num_frames} "
                                f"frames); last error: {last_error}")

    def _mel(self, mel: np.ndarray, start: int) -> torch.Tensor:
        window = torch.as_tensor(np.asarray(mel_window(mel, start, self.num_frames)), dtype=torch.float32)
        if window.ndim == 2:
            window = window[None]
        return window


class EpochSampler(Sampler[int]):
    """Shuffled indices for one epoch, as ``epoch * len(dataset) + index`` so the dataset knows the epoch.

    The order depends only on ``(seed, epoch)``; call [`set_epoch`] before each epoch.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        base = self.epoch * self.num_samples
        return iter(int(base + i) for i in order)
