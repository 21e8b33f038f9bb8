"""Audio file reading and writing with the bundled ffmpeg, and the audio checks of a lip-sync run."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from dataclasses import dataclass
from typing import Any

import imageio_ffmpeg
import numpy as np

from ..errors import InvalidAudioError
from .constants import SAMPLE_RATE, VIDEO_FPS
from .files import check_input_file, ffmpeg_reason

SILENCE_THRESHOLD = 1e-4
"""A track whose samples all stay below this magnitude (about -80 dBFS) is silent: nothing to lip-sync to."""


VIDEO_CLOCK_FILTER = "aresample=async=1:first_pts=0"
"""ffmpeg audio filter that places a track on its file's clock: silence before a track that starts after the video
and in its gaps of more than 0.1 s, a start before the file's trimmed; sample 0 is then at frame 0."""


def _decode_command(path: str, sample_rate: int, video_clock: bool = False) -> list[str]:
    clock = ["-af", VIDEO_CLOCK_FILTER] if video_clock else []
    return [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", path, "-map", "0:a:0", *clock,
            "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]


def _decode_error(path: str, returncode: int, stderr: bytes) -> InvalidAudioError:
    text = stderr.decode(errors="replace")
    if "matches no streams" in text or "does not contain any stream" in text:
        return InvalidAudioError(f"no audio stream in {path}")
    return InvalidAudioError(f"cannot read audio from {path}: {ffmpeg_reason(text, returncode)}")


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, video_clock: bool = False) -> np.ndarray:
    """Decode any audio (or video) file to mono float32 at ``sample_rate`` Hz with ffmpeg.

    ``video_clock``: the first audio track of a video, placed on the clock of its frames (see
    [`VIDEO_CLOCK_FILTER`]): for the sound of a video whose frames are decoded from the start of the file (a track
    that starts late would otherwise be out of sync by its delay).

    Raises:
        InvalidAudioError: the file is missing, unreadable, has no audio stream, or holds no samples.
    """
    path = check_input_file(path, InvalidAudioError, "audio")
    proc = subprocess.run(_decode_command(path, sample_rate, video_clock), capture_output=True)
    if proc.returncode != 0:
        raise _decode_error(path, proc.returncode, proc.stderr)
    audio = np.frombuffer(proc.stdout, dtype=np.float32)
    if audio.size == 0:
        raise InvalidAudioError(f"audio stream of {path} holds no samples")
    return audio.copy()


@dataclass
class AudioInfo:
    """What decoding an audio track found: its length and its loudest sample."""

    path: str
    duration: float
    peak: float

    @property
    def silent(self) -> bool:
        return self.peak < SILENCE_THRESHOLD


def scan_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, chunk_seconds: float = 30.0,
               what: str = "audio") -> AudioInfo:
    """Decode the audio of ``path`` as a stream (constant memory, whatever its length) and measure its duration and
    peak, without keeping the samples; ``what`` names the file in messages (e.g. ``"audio for face 1"``).

    Raises:
        InvalidAudioError: the file is missing, unreadable, has no audio stream, or holds no samples.
    """
    path = check_input_file(path, InvalidAudioError, what)
    proc = subprocess.Popen(_decode_command(path, sample_rate), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    count, peak, chunk = 0, 0.0, int(chunk_seconds * sample_rate) * 4
    try:
        while data := proc.stdout.read(chunk):
            samples = np.frombuffer(data[: len(data) // 4 * 4], dtype=np.float32)
            count += samples.size
            if samples.size:
                peak = max(peak, float(np.abs(samples).max()))
        stderr = proc.stderr.read()
        returncode = proc.wait()
    finally:
        if proc.poll() is None:  # stopped early (Ctrl-C): do not leave ffmpeg running
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if returncode != 0:
        raise _decode_error(path, returncode, stderr)
    if count == 0:
        raise InvalidAudioError(f"audio stream of {path} holds no samples")
    return AudioInfo(path, count / sample_rate, peak)


def as_samples(audio: str | os.PathLike | np.ndarray | Any) -> np.ndarray:
    """Mono float32 samples at 16 kHz from a file (any format ffmpeg reads) or from samples in memory (a NumPy
    array or a torch tensor).

    Raises:
        InvalidAudioError: unreadable file, or an array that is empty or not one-dimensional.
    """
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio)
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported: no need to import it here
    if torch is not None and isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().float().numpy()
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim == 2 and 1 in samples.shape:
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise InvalidAudioError(f"audio samples must be mono (one dimension, 16 kHz), got shape {samples.shape}")
    if samples.size == 0:
        raise InvalidAudioError("audio holds no samples")
    if not np.isfinite(samples).all():
        raise InvalidAudioError("audio samples contain NaN or infinity")
    return samples


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float samples in [-1, 1] as a 16-bit PCM WAV file."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(os.fspath(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(sample_rate)
        fh.writeframes(pcm.tobytes())


def check_not_silent(audio: np.ndarray | AudioInfo, path: str = "audio", threshold: float = SILENCE_THRESHOLD) -> None:
    """Raise [`InvalidAudioError`] when the whole track (samples, or the [`AudioInfo`] of a scan) is silent (nothing to
    lip-sync to)."""
    peak = audio.peak if isinstance(audio, AudioInfo) else float(np.abs(audio).max())
    if peak < threshold:
        raise InvalidAudioError(f"audio track of {path} is silent: there is no speech to lip-sync to")


def num_video_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = VIDEO_FPS) -> int:
    """Number of 25 fps frames that cover ``num_samples`` of audio (rounded to the nearest frame)."""
    return max(1, int(round(num_samples * fps / sample_rate)))


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """``samples`` cut to ``length``, or padded with silence to it."""
    if len(samples) >= length:
        return samples[:length]
    return np.concatenate([samples, np.zeros(length - len(samples), samples.dtype)])


def mix_tracks(tracks: list[np.ndarray]) -> np.ndarray:
    """The sum of mono tracks (as long as the longest; shorter ones end in silence), scaled down as a whole when it
    would clip."""
    length = max(len(t) for t in tracks)
    mix = np.sum([fit_length(np.asarray(t, np.float32), length) for t in tracks], axis=0)
    peak = float(np.abs(mix).max()) if len(mix) else 0.0
    return (mix / peak).astype(np.float32) if peak > 1.0 else mix.astype(np.float32)
