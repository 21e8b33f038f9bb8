"""Who is speaking: how well each face track's mouth follows a soundtrack.

Two scores, both higher for a face whose lips move with the sound:

* **Lip motion against loudness** (always available, from the landmarks the face analysis already has). The
  soundtrack is band-passed to the speech band (300-3000 Hz) and its loudness taken per video frame. Two signals
  are compared with it, each by its correlation over time: the opening of the lips, band-passed to the syllable
  rate (2-8 Hz, which removes slow changes such as a smile) against the loudness band-passed alike, and the
  frame-to-frame motion of the lips against the loudness in decibels. The lips usually move slightly before the
  sound, so both correlations are taken at the best of the offsets from 2 frames before to 6 frames after the
  lips (-80 ms to +240 ms); the score is the mean of the two at that offset, between -1 and 1. On the shared
  test clips the face whose own voice plays scores 0.2 to 0.6 over 6 s, the other face -0.1 to 0.2.
* **SyncNet confidence** (when a [`~latentsync.models.StableSyncNet`] is given): the lower half of each aligned
  face, in 16-frame windows, and the audio are embedded by the SyncNet and compared at offsets of up to
  ``vshift`` frames; the score is the median minus the minimum of the mean distances over the offsets (the sync
  confidence of [`~latentsync.eval.sync_confidence.offset_confidence`]).

A face is *clearly speaking* when its score reaches the rule's ``min_score`` and leads the next face of its shot by
``min_margin`` ([`SpeakingRule`]).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.signal import butter, sosfiltfilt

from ..audio_features.wav2lip_mel import mel_window, num_mel_windows, wav2lip_mel
from ..errors import InvalidAudioError, LatentSyncInputError
from ..eval.sync_confidence import offset_confidence
from ..media.audio import Track, load_audio
from ..media.constants import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from ..media.video import FrameSource
from ..models.syncnet import StableSyncNet
from ..utils import frames_to_pixels
from .alignment import FaceAligner, smooth_anchors
from .tracking import FaceTrack, FaceTracks

logger = logging.getLogger(__name__)

SPEECH_BAND_HZ = (300.0, 3000.0)
SYLLABLE_BAND_HZ = (2.0, 8.0)
LIP_LAGS = range(-2, 7)
"""Offsets (frames) of the sound after the lips that the lip score tries."""
MIN_SCORED_FRAMES = 38
"""Tracks seen for a shorter span (1.5 s) get no lip score: too short to tell."""


@dataclass(frozen=True)
class SpeakingRule:
    """When a face counts as clearly speaking: its score is at least ``min_score`` and at least ``min_margin``
    above every other face of its shot."""

    min_score: float
    min_margin: float


LIP_RULE = SpeakingRule(min_score=0.15, min_margin=0.05)
"""For the lip-motion score; measured on the shared clips (see the README)."""
SYNCNET_RULE = SpeakingRule(min_score=0.05, min_margin=0.02)
"""For the SyncNet confidence (cosine distances); not calibrated on the released weights here (no GPU, no Hub)."""


# ---------------------------------------------------------------------------------------------------- lip motion
def frame_loudness(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """Root-mean-square level of the speech band (300-3000 Hz) of 16 kHz ``samples`` in each 25 fps frame,
    ``(num_frames,)``; frames past the end of the sound are silent (0)."""
    sos = butter(4, SPEECH_BAND_HZ, btype="bandpass", fs=SAMPLE_RATE, output="sos")
    speech = sosfiltfilt(sos, np.asarray(samples, np.float64)) if len(samples) > 30 else np.zeros(len(samples))
    usable = min(num_frames, len(speech) // SAMPLES_PER_FRAME)
    out = np.zeros(num_frames)
    frames = speech[: usable * SAMPLES_PER_FRAME].reshape(usable, SAMPLES_PER_FRAME)
    out[:usable] = np.sqrt((frames**2).mean(1))
    return out


def _fill_gaps(values: np.ndarray) -> np.ndarray | None:
    """Linear interpolation over NaN rows of ``(n, k)`` values (edges hold); None when fewer than 2 are known."""
    ok = np.isfinite(values[:, 0])
    if ok.sum() < 2:
        return None
    t = np.arange(len(values))
    return np.stack([np.interp(t, t[ok], values[ok, j]) for j in range(values.shape[1])], axis=1)


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() < 1e-9 or y.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _lagged_correlations(lips: np.ndarray, sound: np.ndarray, lags: Iterable[int]) -> np.ndarray:
    """Correlation of ``lips[t]`` with ``sound[t + lag]`` for each lag (over the frames both cover)."""
    n = len(lips)
    out = []
    for lag in lags:
        if lag >= 0:
            out.append(_correlation(lips[: n - lag], sound[lag:]))
        else:
            out.append(_correlation(lips[-lag:], sound[: n + lag]))
    return np.array(out)


def lip_score(lips: np.ndarray, loudness: np.ndarray) -> float | None:
    """How well lip gaps ``(n, 3)`` of consecutive frames (NaN where unknown) follow the speech loudness of the same
    frames ``(n,)``, between -1 and 1 (see the module docstring); None when there are too few frames."""
    lips = _fill_gaps(lips) if len(lips) >= MIN_SCORED_FRAMES else None
    if lips is None:
        return None
    band = butter(2, SYLLABLE_BAND_HZ, btype="bandpass", fs=VIDEO_FPS, output="sos")
    opening = sosfiltfilt(band, lips[:, 0])
    level = sosfiltfilt(band, loudness)
    motion = np.abs(np.diff(lips, axis=0, prepend=lips[:1])).sum(1)
    decibels = 20 * np.log10(np.maximum(loudness, 1e-3))
    kernel = np.ones(3) / 3
    motion = np.convolve(np.pad(motion, 1, mode="edge"), kernel, mode="valid")
    decibels = np.convolve(np.pad(decibels, 1, mode="edge"), kernel, mode="valid")
    both = (_lagged_correlations(opening, level, LIP_LAGS) + _lagged_correlations(motion, decibels, LIP_LAGS)) / 2
    return float(both.max())


def lip_scores(tracks: FaceTracks, samples: np.ndarray) -> dict[int, float | None]:
    """The lip-motion score of every track against the soundtrack ``samples`` (16 kHz mono)."""
    loudness = frame_loudness(samples, tracks.num_frames)
    return {t.index: lip_score(t.dense_lips(), loudness[t.first_frame : t.last_frame + 1]) for t in tracks}


# ---------------------------------------------------------------------------------------------------- SyncNet
@torch.no_grad()
def syncnet_scores(
    frames: Iterable[np.ndarray],
    tracks: FaceTracks,
    samples: np.ndarray,
    syncnet: StableSyncNet,
    stride: int = 2,
    vshift: int = 15,
    batch_size: int = 16,
    smoothing: float = 1.5,
    progress: Callable[..., Any] | None = None,
) -> dict[int, float | None]:
    """The SyncNet sync confidence of every track against the soundtrack ``samples`` (16 kHz mono).

    ``frames`` are the video's frames again (one more pass, in order); each track's faces are aligned as for lip
    sync and cut into windows of the SyncNet's ``num_frames`` consecutive frames, every ``stride`` frames. Only those
    windows and their embeddings are held, so memory does not grow with the video. Tracks with no complete window
    get None.
    """
    config = syncnet.config
    if config.latent_space:
        raise LatentSyncInputError("choosing the speaking face needs a pixel-space SyncNet, not a latent-space one")
    res, length = int(config.resolution), int(config.num_frames)
    aligner = FaceAligner(res)
    device, dtype = syncnet.device, syncnet.dtype
    matrices: dict[int, dict[int, np.ndarray]] = {}
    for track in tracks:
        dense = smooth_anchors(track.dense_anchors(), smoothing)
        matrices[track.index] = {track.first_frame + k: aligner.matrix(a) for k, a in enumerate(dense)
                                 if np.isfinite(a[0, 0])}
    last = max((t.last_frame for t in tracks), default=-1)
    recent: dict[int, deque] = {t.index: deque(maxlen=length) for t in tracks}
    pending: list[tuple[int, int, np.ndarray]] = []
    embedded: dict[int, list[tuple[int, torch.Tensor]]] = {t.index: [] for t in tracks}

    def embed() -> None:
        pixels = torch.stack([frames_to_pixels(w).flatten(0, 1) for _, _, w in pending])
        visual = syncnet.encode_frames(pixels.to(device, dtype)).float().cpu()
        for (index, start, _), v in zip(pending, visual):
            embedded[index].append((start, v))
        pending.clear()

    frame_iter = iter(frames)
    numbered = enumerate(frame_iter)
    if progress is not None:
        numbered = progress(numbered, "SyncNet scores", last + 1)
    try:
        for i, frame in numbered:
            if i > last:
                break
            for index, by_frame in matrices.items():
                matrix = by_frame.get(i)
                if matrix is None:
                    continue
                face = aligner.align(frame, matrix)
                recent[index].append((i, face[res // 2 :] if config.lower_half else face))
                window = recent[index]
                start = i - length + 1
                if len(window) == length and window[0][0] == start and start % stride == 0:
                    pending.append((index, start, np.stack([f for _, f in window])))
                    if len(pending) >= batch_size:
                        embed()
    finally:
        if hasattr(frame_iter, "close"):  # stop the decoder of a video file we leave early
            frame_iter.close()
    if pending:
        embed()

    mel = wav2lip_mel(samples)
    num_audio = num_mel_windows(mel.shape[1], length)
    scores: dict[int, float | None] = {}
    for track in tracks:
        if not embedded[track.index]:
            scores[track.index] = None
            continue
        starts = np.array([s for s, _ in embedded[track.index]])
        lo, hi = max(0, starts.min() - vshift), min(num_audio, starts.max() + vshift + 1)
        audio = []
        for b in range(lo, hi, batch_size):
            windows = [torch.from_numpy(np.ascontiguousarray(mel_window(mel, j, length)))[None]
                       for j in range(b, min(hi, b + batch_size))]
            audio.append(syncnet.encode_audio(torch.stack(windows).to(device, dtype)).float().cpu())
        if not audio:  # no sound under this face at all
            scores[track.index] = None
            continue
        visual = torch.stack([v for _, v in embedded[track.index]])
        estimate = offset_confidence(visual, torch.cat(audio), vshift, "cosine", visual_starts=starts - lo)
        scores[track.index] = estimate.confidence
    return scores


def soundtrack(source: FrameSource, track: Track = "speech") -> tuple[np.ndarray | None, str | None]:
    """A video's own sound (16 kHz mono samples; of several audio tracks, ``track`` as
    [`~latentsync.media.audio.load_audio`] takes it: by default the one with the speech), or None and why there is
    none (``"no soundtrack"``, ``"silent soundtrack"``)."""
    if source.path is None:
        return None, "no soundtrack"
    try:
        samples = load_audio(source.path, track=track)
    except InvalidAudioError:
        return None, "no soundtrack"
    if float(np.abs(samples).max()) < 1e-4:
        return None, "silent soundtrack"
    return samples, None


def speaking_scores(tracks: FaceTracks, samples: np.ndarray, syncnet: StableSyncNet | None = None,
                    frames: Iterable[np.ndarray] | None = None, progress: Callable[..., Any] | None = None,
                    ) -> tuple[dict[int, float | None], SpeakingRule]:
    """Every track's speaking score against the soundtrack ``samples`` and the rule that reads it: the SyncNet
    confidence when a ``syncnet`` (and the video's ``frames``, for one more pass) is given, else the lip-motion
    score."""
    if syncnet is not None:
        if frames is None:
            raise ValueError("SyncNet scores need the video's frames")
        return syncnet_scores(frames, tracks, samples, syncnet, progress=progress), SYNCNET_RULE
    return lip_scores(tracks, samples), LIP_RULE


def clear_speaker(candidates: list[FaceTrack], scores: dict[int, float | None], rule: SpeakingRule
                  ) -> FaceTrack | None:
    """The track of ``candidates`` (the faces of one shot) that is clearly speaking by ``rule``, or None."""
    ranked = sorted((scores.get(t.index) for t in candidates), key=lambda s: -np.inf if s is None else s)
    best = max(candidates, key=lambda t: -np.inf if scores.get(t.index) is None else scores[t.index])
    top = scores.get(best.index)
    if top is None or top < rule.min_score:
        return None
    runner_up = ranked[-2] if len(ranked) > 1 else None
    if runner_up is not None and top - runner_up < rule.min_margin:
        return None
    return best
