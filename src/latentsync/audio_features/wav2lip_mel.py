"""Wav2Lip-style mel spectrogram: the audio input of SyncNet (as the official ``latentsync/utils/audio.py`` makes it).

16 kHz audio -> pre-emphasis 0.97 -> STFT (n_fft 800, hop 200, Hann window 800, centred with zero padding, as
librosa 0.10) -> magnitude -> 80 Slaney mel bands 55-7600 Hz -> 20 log10 (floored at -100 dB) - 20 dB ->
symmetric normalisation to [-4, 4]. 80 mel frames per second, i.e. 3.2 per 25 fps video frame.

Implemented with numpy/scipy (no librosa); the mel filter bank is transformers' ``mel_filter_bank`` with Slaney
scale and norm, the same filters librosa builds by default.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from transformers.audio_utils import mel_filter_bank

from ..media.constants import SAMPLE_RATE, VIDEO_FPS

N_FFT = 800
HOP_LENGTH = 200
WIN_LENGTH = 800
NUM_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_FRAMES_PER_SECOND = SAMPLE_RATE / HOP_LENGTH  # 80


@functools.lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """Slaney-normalised mel filters ``(80, n_fft // 2 + 1)`` (librosa ``filters.mel`` defaults)."""
    bank = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=NUM_MELS,
        min_frequency=FMIN,
        max_frequency=FMAX,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return np.ascontiguousarray(bank.T)


def _stft_magnitude(signal: np.ndarray) -> np.ndarray:
    """``|STFT|`` ``(n_fft // 2 + 1, 1 + len // hop)``: centred frames, zero padding, periodic Hann window."""
    padded = np.pad(signal, (N_FFT // 2, N_FFT // 2), mode="constant")
    num_frames = 1 + (len(padded) - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:num_frames]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)
    return np.abs(np.fft.rfft(frames * window, n=N_FFT, axis=1)).T


def wav2lip_mel(audio_16k: np.ndarray) -> np.ndarray:
    """Normalised mel spectrogram ``(80, 1 + len(audio) // 200)`` float32 in [-4, 4] of mono 16 kHz audio."""
    audio = np.asarray(audio_16k, dtype=np.float64)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D mono signal, got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError("audio is empty")
    from scipy.signal import lfilter  # deferred: scipy is optional (train/eval extras), the pipeline never needs it

    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], audio)
    mel = mel_basis() @ _stft_magnitude(emphasised)
    min_level = math.exp(MIN_LEVEL_DB / 20 * math.log(10))
    db = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    norm = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE
    return np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def mel_window_length(num_frames: int = 16) -> int:
    """Mel frames covering ``num_frames`` video frames: ``ceil(num_frames * 3.2)`` (52 for 16, 80 for 25)."""
    return math.ceil(num_frames / 5 * 16)


def mel_start(start_frame: int, fps: float = VIDEO_FPS) -> int:
    """First mel frame of video frame ``start_frame`` (``int(80 * start / fps)``, as the official code)."""
    return int(MEL_FRAMES_PER_SECOND * (start_frame / float(fps)))


def num_mel_windows(mel_length: int, num_frames: int = 16, fps: float = VIDEO_FPS) -> int:
    """How many consecutive start frames ``0, 1, ...`` have a complete mel window in a mel of ``mel_length``."""
    length = mel_window_length(num_frames)
    count = 0
    while mel_start(count, fps) + length <= mel_length:
        count += 1
    return count


def mel_window(mel: np.ndarray, start_frame: int, num_frames: int = 16, fps: float = VIDEO_FPS) -> np.ndarray:
    """The ``(80, ceil(num_frames * 3.2))`` slice of ``mel`` aligned with video frames ``start_frame ...``.

    Raises:
        ValueError: the window starts before 0 or runs past the end of the mel.
    """
    if start_frame < 0:
        raise ValueError(f"start_frame must be >= 0, got {start_frame}")
    start = mel_start(start_frame, fps)
    length = mel_window_length(num_frames)
    if start + length > mel.shape[-1]:
        raise ValueError(
            f"mel of {mel.shape[-1]} frames is too short for {num_frames} video frames from frame {start_frame} "
            f"(needs mel frames {start}..{start + length - 1})"
        )
    return mel[..., start : start + length]
