"""Video and audio files: probing, reading (any format ffmpeg reads, resampled to the model's 25 fps / 16 kHz; of a
file with several audio tracks, the one with the speech), atomic writing that never replaces an input, and the
media constants."""

from .audio import (
    AudioInfo,
    AudioTrack,
    SpeechTrack,
    as_samples,
    check_not_silent,
    fit_length,
    load_audio,
    mix_tracks,
    num_video_frames,
    scan_audio,
    speech_track,
    write_wav,
)
from .constants import (
    OUTPUT_FORMATS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    SILENT_VIDEO_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VIDEO_FPS,
)
from .files import check_input_file, find_videos, is_video_file
from .probe import VideoInfo, probe_video
from .video import FrameSource, VideoWriter, check_output_path, iter_frames, open_frames, trim_media

__all__ = [
    "OUTPUT_FORMATS",
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "SILENT_VIDEO_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "VIDEO_FPS",
    "AudioInfo",
    "AudioTrack",
    "FrameSource",
    "SpeechTrack",
    "VideoInfo",
    "VideoWriter",
    "as_samples",
    "check_input_file",
    "check_not_silent",
    "check_output_path",
    "find_videos",
    "fit_length",
    "is_video_file",
    "iter_frames",
    "load_audio",
    "mix_tracks",
    "num_video_frames",
    "open_frames",
    "probe_video",
    "scan_audio",
    "speech_track",
    "trim_media",
    "write_wav",
]
