"""Deprecated: the Wav2Lip mel moved to :mod:`latentsync.audio_features`."""

from ._deprecation import warn_moved
from .audio_features.wav2lip_mel import (  # noqa: F401
    FMAX,
    FMIN,
    HOP_LENGTH,
    MAX_ABS_VALUE,
    MEL_FRAMES_PER_SECOND,
    MIN_LEVEL_DB,
    N_FFT,
    NUM_MELS,
    PREEMPHASIS,
    REF_LEVEL_DB,
    WIN_LENGTH,
    mel_basis,
    mel_start,
    mel_window,
    mel_window_length,
    num_mel_windows,
    wav2lip_mel,
)
from .media.constants import SAMPLE_RATE, VIDEO_FPS  # noqa: F401

warn_moved(__name__, "latentsync.audio_features")
