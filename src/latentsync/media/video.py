"""Video reading and writing with the ffmpeg binary bundled in imageio-ffmpeg.

Frames are decoded as a stream of RGB uint8 arrays resampled to a fixed frame rate by ffmpeg's ``fps`` filter, so
inputs of any frame rate (including variable) map onto the model's 25 fps timeline. Output is written to a hidden
temporary file next to the target and renamed only when complete, so a failed run never leaves a partial video.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import imageio_ffmpeg
import numpy as np

from ..errors import InvalidVideoError
from .constants import OUTPUT_FORMATS, SAMPLE_RATE, VIDEO_FPS
from .files import check_input_file

logger = logging.getLogger(__name__)


@dataclass
class VideoInfo:
    """What ffmpeg reports about a video file."""

    path: str
    width: int
    height: int
    fps: float
    duration: float
    has_audio: bool


def _open(path: str, fps: float | None):
    output_params = ["-vf", f"fps={fps}"] if fps else None
    try:
        gen = imageio_ffmpeg.read_frames(path, output_params=output_params)
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration) as exc:
        text = str(exc)
        if "does not contain any stream" in text:
            raise InvalidVideoError(f"no video stream in {path}") from None
        reason = text.strip().splitlines()[-1] if text.strip() else "ffmpeg could not decode it"
        raise InvalidVideoError(f"cannot read video {path}: {reason}") from None
    if not meta.get("size") or "fps" not in meta:
        gen.close()
        raise InvalidVideoError(f"no video stream in {path}")
    return gen, meta


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read size, frame rate, duration and whether an audio stream exists.

    Raises:
        InvalidVideoError: missing, empty, unreadable, or without a video stream.
    """
    path = check_input_file(path, InvalidVideoError, "video")
    gen, meta = _open(path, None)
    gen.close()
    w, h = meta["size"]
    return VideoInfo(path, int(w), int(h), float(meta["fps"]), float(meta.get("duration") or 0.0),
                     meta.get("audio_codec") is not None)


def iter_frames(path: str | os.PathLike, fps: float | None = VIDEO_FPS) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames ``(H, W, 3)``, resampled to ``fps`` (None keeps the source rate)."""
    path = os.fspath(path)
    gen, meta = _open(path, fps)
    w, h = meta["size"]
    try:
        for buf in gen:
            yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
    except RuntimeError as exc:
        raise InvalidVideoError(f"error while decoding {path}: {exc}") from exc
    finally:
        gen.close()


@dataclass
class FrameSource:
    """Frames at the model's frame rate that can be read more than once: a video file decoded by ffmpeg each time,
    or frames held in memory. Iterating yields RGB uint8 ``(H, W, 3)`` arrays."""

    label: str  # the file path, or "frames in memory"
    expected_frames: int  # frame count (estimated from the duration for files)
    read: Callable[[], Iterator[np.ndarray]]
    path: str | None = None
    timestamps: np.ndarray | None = None  # seconds from the first frame, when the frames keep the input's timing
    time_base: Fraction | None = None  # the clock of ``timestamps`` in the file

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.read()


def _as_rgb_uint8(frame: Any, i: int) -> np.ndarray:
    if hasattr(frame, "convert") and hasattr(frame, "size"):  # PIL image
        frame = np.asarray(frame.convert("RGB"))
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise InvalidVideoError(f"frame {i} must be an RGB uint8 array (H, W, 3) or a PIL image, "
                                f"got {arr.dtype} {tuple(arr.shape)}")
    return arr


def open_frames(video: str | os.PathLike | np.ndarray | Sequence[Any], fps: float = VIDEO_FPS) -> FrameSource:
    """A re-readable [`FrameSource`] for a video path (resampled to ``fps``) or for frames in memory.

    In-memory frames (an array ``(T, H, W, 3)`` or a sequence of ``(H, W, 3)`` arrays or PIL images, RGB uint8) are
    taken to be at ``fps`` already.

    Raises:
        InvalidVideoError: unreadable file, no frames, or frames of the wrong type or of different sizes.
    """
    if isinstance(video, (str, os.PathLike)):
        info = probe_video(video)
        return FrameSource(info.path, max(1, int(round(info.duration * fps))), lambda: iter_frames(info.path, fps),
                           info.path)
    if isinstance(video, np.ndarray) and video.ndim != 4:
        raise InvalidVideoError(f"a video array must be (frames, height, width, 3), got shape {video.shape}")
    if len(video) == 0:
        raise InvalidVideoError("video has no frames: the frame sequence is empty")
    shape = _as_rgb_uint8(video[0], 0).shape
    for i, frame in enumerate(video):
        if _as_rgb_uint8(frame, i).shape != shape:
            raise InvalidVideoError(f"frame {i} is {_as_rgb_uint8(frame, i).shape[:2]}, frame 0 is {shape[:2]}: "
                                    "all frames must have the same size")

    def read() -> Iterator[np.ndarray]:
        return (_as_rgb_uint8(frame, i) for i, frame in enumerate(video))

    return FrameSource("frames in memory", len(video), read)


def check_output_path(path: str | os.PathLike) -> str:
    """``path`` as a string, or [`InvalidVideoError`] when its format is not writable or its folder is missing."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise InvalidVideoError(f"unsupported output format {ext or '(none)'}: use one of {', '.join(OUTPUT_FORMATS)}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidVideoError(f"output folder does not exist: {directory}")
    return path


class VideoWriter:
    """Encode RGB frames to H.264 (+ AAC audio from ``audio_path``) atomically.

    Use as a context manager: on a clean exit the file appears at ``path``; on an exception nothing is left.
    """

    def __init__(self, path: str | os.PathLike, fps: float = VIDEO_FPS, audio_path: str | None = None, crf: int = 18):
        self.path = check_output_path(path)
        ext = os.path.splitext(self.path)[1].lower()
        directory = os.path.dirname(os.path.abspath(self.path))
        self._tmp = os.path.join(directory, f".{os.path.basename(self.path)}.partial{ext}")
        self.fps, self.audio_path, self.crf = fps, audio_path, crf
        self._gen = None
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        if self._gen is None:
            h, w = frame.shape[:2]
            self._gen = imageio_ffmpeg.write_frames(
                self._tmp, (w, h), fps=self.fps, codec="libx264", quality=None, macro_block_size=2,
                output_params=["-crf", str(self.crf), "-preset", "medium"],
                audio_path=self.audio_path, audio_codec="aac" if self.audio_path else None,
                ffmpeg_log_level="error",
            )
            self._gen.send(None)
        self._gen.send(np.ascontiguousarray(frame))
        self.frames_written += 1

    def close(self) -> None:
        if self._gen is None:
            raise InvalidVideoError("no frames to write")
        self._gen.close()
        self._gen = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._gen is not None:
            try:
                self._gen.close()
            except Exception:  # noqa: BLE001 - the encoder may already be broken; we only clean up
                pass
            self._gen = None
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def trim_media(src: str, dst: str, seconds: float, video: bool) -> str:
    """Copy the first ``seconds`` of ``src`` to ``dst``: the picture only (H.264) when ``video``, else the sound
    only (16 kHz mono)."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", src, "-t", f"{seconds}"]
    cmd += ["-an", "-c:v", "libx264", "-crf", "18"] if video else ["-vn", "-ac", "1", "-ar", str(SAMPLE_RATE)]
    subprocess.run(cmd + [dst], check=True, capture_output=True)
    return dst
