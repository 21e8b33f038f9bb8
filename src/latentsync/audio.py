"""Deprecated: audio file IO moved to :mod:`latentsync.media`, Whisper features to :mod:`latentsync.audio_features`."""

from ._deprecation import warn_moved
from .audio_features.whisper import (  # noqa: F401
    CONTEXT_FRAMES_AFTER,
    CONTEXT_FRAMES_BEFORE,
    TOKENS_PER_SECOND,
    WINDOW_MEL_FRAMES,
    AudioWindowMode,
    frame_audio_contexts,
    log_mel,
    whisper_features,
)
from .media.audio import as_samples, check_not_silent, load_audio, num_video_frames, write_wav  # noqa: F401
from .media.constants import SAMPLE_RATE, VIDEO_FPS  # noqa: F401

warn_moved(__name__, "latentsync.media (audio files) and latentsync.audio_features (Whisper features)")
