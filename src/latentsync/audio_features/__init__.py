"""Audio features the models condition on: Whisper token features (eager, streamed per 30 s window, or cached per
training clip) for the U-Net, and the Wav2Lip-style mel for SyncNet."""

from .cache import AudioFeatureCache
from .wav2lip_mel import mel_start, mel_window, mel_window_length, num_mel_windows, wav2lip_mel
from .whisper import (
    AUDIO_WINDOW_MODES,
    AudioWindowMode,
    StreamedAudioFeatures,
    encode_audio_features,
    frame_audio_contexts,
    log_mel,
    whisper_features,
)

__all__ = [
    "AUDIO_WINDOW_MODES",
    "AudioFeatureCache",
    "AudioWindowMode",
    "StreamedAudioFeatures",
    "encode_audio_features",
    "frame_audio_contexts",
    "log_mel",
    "mel_start",
    "mel_window",
    "mel_window_length",
    "num_mel_windows",
    "wav2lip_mel",
    "whisper_features",
]
