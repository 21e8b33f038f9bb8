"""The input's own timeline: every stored frame with its timestamp, and writing frames at given timestamps.

The default path resamples every input to the model's 25 fps (ffmpeg's ``fps`` filter). With the input's timeline
(``output_fps="input"``) every frame the decoder returns is kept with its presentation time, so 24, 30, 50 or 60 fps
footage is written back frame for frame, and a variable-frame-rate input keeps its uneven timestamps. Reading and
writing with timestamps uses PyAV (FFmpeg's libraries), since the ffmpeg command line's raw-frame pipes carry no
timestamps; the sound is muxed in afterwards with the bundled ffmpeg binary.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from fractions import Fraction
from types import ModuleType
from typing import TYPE_CHECKING

import imageio_ffmpeg
import numpy as np

from ..errors import InvalidOutputError, InvalidVideoError
from ..tempfiles import partial_path, release_partial
from .audio import MUXED_SOUND_FILTER
from .files import check_input_file, ffmpeg_path, ffmpeg_reason
from .probe import VideoInfo, probe_video
from .video import (
    CPU_ENCODER,
    OUTPUT_COLOR_RANGE,
    OUTPUT_COLORSPACE,
    AtomicWriter,
    FrameSource,
    check_output_path,
    encoder_settings,
    even_sides,
    hardware_decode_failed,
    hardware_encode_failed,
    iter_tone_mapped_frames,
    usable_encoder,
    worth_trying,
)

if TYPE_CHECKING:
    import av

logger = logging.getLogger(__name__)

DEFAULT_TIME_BASE = Fraction(1, 90000)
"""Time base of written timestamps when the input's own is not known (frames in memory)."""


def _pyav() -> ModuleType:
    """PyAV, imported on first use: it loads FFmpeg's shared libraries (about 0.4 s), and only the paths that keep
    the input's own timeline need it, so the default 25 fps path and ``import latentsync`` do without it."""
    import av  # deferred: heavy, see above

    return av


def _open_container(path: str, hwaccel: str | None = None) -> av.container.InputContainer:
    av = _pyav()
    if worth_trying(hwaccel):
        try:
            container = av.open(ffmpeg_path(path), hwaccel=av.codec.hwaccel.HWAccel(device_type=hwaccel,
                                                                        allow_software_fallback=True))
        except (av.FFmpegError, OSError) as exc:
            container = _open_on_cpu(path)  # a broken file fails here too, with its own error
            hardware_decode_failed(hwaccel, str(exc))
        return _with_video(container, path)
    return _with_video(_open_on_cpu(path), path)


def _open_on_cpu(path: str) -> av.container.InputContainer:
    av = _pyav()
    try:
        return av.open(ffmpeg_path(path))
    except (av.FFmpegError, OSError) as exc:
        raise InvalidVideoError(f"cannot read video {path}: {exc}") from None


def _with_video(container: av.container.InputContainer, path: str) -> av.container.InputContainer:
    if not container.streams.video:
        container.close()
        raise InvalidVideoError(f"no video stream in {path}")
    return container


def read_timestamps(path: str | os.PathLike) -> tuple[np.ndarray, Fraction]:
    """Presentation time (seconds, the first frame at 0) of every frame of the first video stream, in display
    order, and the stream's time base. Packet timestamps are read without decoding; a stream without them is
    decoded.

    Raises:
        InvalidVideoError: missing, unreadable, without a video stream, or without frames.
    """
    path = check_input_file(path, InvalidVideoError, "video")
    with _open_container(path) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base or DEFAULT_TIME_BASE
        pts = [p.pts for p in container.demux(stream) if p.size and not p.is_discard]
    if not pts or any(p is None for p in pts):  # no packet timestamps (raw streams): ask the decoder
        with _open_container(path) as container:
            pts = [f.pts for f in container.decode(video=0)]
        if any(p is None for p in pts):
            raise InvalidVideoError(f"{path} has frames without timestamps: its frame rate cannot be kept "
                                    "(use output_fps=25)")
    if not pts:
        raise InvalidVideoError(f"video has no frames: {path}")
    ticks = np.sort(np.asarray(pts, dtype=np.int64))
    return (ticks - ticks[0]) * float(time_base), Fraction(time_base)


def as_displayed(image: np.ndarray, rotation: int, mirrored: bool) -> np.ndarray:
    """A stored picture ``(H, W, C)`` as players show it: turned ``rotation`` degrees clockwise, then mirrored left
    to right when ``mirrored`` (a probe's [`~latentsync.media.probe.VideoInfo`] fields)."""
    turns = (-rotation // 90) % 4  # np.rot90 turns counterclockwise; the metadata says clockwise
    if not turns and not mirrored:
        return image
    if turns:
        image = np.rot90(image, turns)
    if mirrored:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def iter_stored_frames(path: str | os.PathLike, hwaccel: str | None = None, info: VideoInfo | None = None
                       ) -> Iterator[np.ndarray]:
    """Every frame of the first video stream as the decoder returns it (no frame dropped or repeated), RGB uint8
    ``(H, W, 3)``, in display order, turned upright and mirrored as the file's display matrix asks (as the 25 fps
    reader's frames); ``hwaccel`` as in [`~latentsync.media.video.iter_frames`]. HDR video is tone-mapped to SDR
    BT.709 as the 25 fps reader does it: decoded by the ffmpeg binary through the same filters, since PyAV's own
    FFmpeg libraries lack the zscale filter the tone mapping needs. ``info``: the file's probe, when the caller has
    it (probed here otherwise)."""
    path = os.fspath(path)
    info = info if info is not None else probe_video(path)
    if info.hdr:
        yield from iter_tone_mapped_frames(path, info.hdr, hwaccel)
        return
    with _open_container(path, hwaccel) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        av = _pyav()
        try:
            for frame in container.decode(stream):
                yield as_displayed(frame.to_ndarray(format="rgb24"), info.rotation, info.mirrored)
        except av.FFmpegError as exc:
            raise InvalidVideoError(f"error while decoding {path}: {exc}") from exc


def open_timed_frames(path: str | os.PathLike, hwaccel: str | None = None) -> FrameSource:
    """A re-readable [`FrameSource`] of every stored frame of a video file, with ``timestamps`` set (seconds).
    The file is probed once, here: each read uses that probe (orientation, HDR)."""
    timestamps, time_base = read_timestamps(path)
    path = os.fspath(path)
    info = probe_video(path)
    return FrameSource(path, len(timestamps), lambda: iter_stored_frames(path, hwaccel, info), path, timestamps,
                       time_base, info.sample_aspect, info.colors_known)


def frame_durations(timestamps: np.ndarray) -> np.ndarray:
    """How long each frame is shown: the gap to the next timestamp; the last frame lasts the median gap (1/25 s
    for a single frame)."""
    gaps = np.diff(timestamps)
    last = float(np.median(gaps)) if len(gaps) else 1.0 / 25
    return np.append(gaps, last)


def output_timeline(timestamps: np.ndarray, duration: float, order_of: Callable[[int, int], np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The output frames that cover ``duration`` seconds on the input's timeline.

    ``order_of(n_source, n_output)`` gives the source frame of each output frame (the looping rule). Each output
    frame lasts as long as its source frame did, and starts where the previous one ended; the output holds every
    frame that starts before ``duration``. Returns ``(source index, start time)`` per output frame.
    """
    durations = frame_durations(timestamps)
    n_src = len(timestamps)
    n_max = int(np.ceil(duration / max(float(durations.min()), 1e-6))) + 1
    order = order_of(n_src, max(n_max, n_src))
    starts = np.empty(len(order))
    starts[:n_src] = timestamps  # the first pass: the input's own timestamps, exactly
    starts[n_src:] = timestamps[-1] + np.cumsum(durations[order[n_src - 1 : -1]])
    n_out = max(1, int(np.searchsorted(starts, duration - 1e-9, side="left")))
    return order[:n_out], starts[:n_out]


class TimedVideoWriter(AtomicWriter):
    """Encode RGB frames at given timestamps to H.264 (+ AAC from ``audio_path``), atomically, like
    [`~latentsync.media.VideoWriter`]: nothing appears at ``path`` unless the file is complete.

    Args:
        path: output file (``.mp4``, ``.mov`` or ``.mkv``).
        timestamps: presentation time (seconds) of each frame that will be written, in order.
        time_base: the timestamps' clock (the input's, so that they are kept exactly).
        audio_path: sound to mux in (any file ffmpeg reads).
        crf: constant quality (x264's scale).
        encoder: a GPU encoder (e.g. ``"h264_nvenc"``) instead of libx264; libx264 after one warning where it
            cannot start.
        sample_aspect, tag_colors: the pixels' shape and whether to record the YUV matrix (see
            [`~latentsync.media.VideoWriter`]).
    """

    def __init__(self, path: str | os.PathLike, timestamps: np.ndarray, time_base: Fraction = DEFAULT_TIME_BASE,
                 audio_path: str | None = None, crf: int = 18, encoder: str | None = None,
                 sample_aspect: Fraction = Fraction(1), tag_colors: bool = True):
        self.path = check_output_path(path, [audio_path] if audio_path else ())
        self._tmp = partial_path(self.path)
        self._video_tmp = partial_path(os.path.splitext(self.path)[0] + ".video.mp4")  # the picture, before the sound
        self.timestamps, self.time_base = np.asarray(timestamps, np.float64), Fraction(time_base)
        self.audio_path, self.crf, self.encoder = audio_path, crf, encoder
        self.sample_aspect, self.tag_colors = Fraction(sample_aspect), tag_colors
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self.frames_written = 0

    def _open(self, width: int, height: int) -> None:
        codec = usable_encoder(self.encoder)
        self._add_stream(codec, width, height)
        if codec != CPU_ENCODER:  # PyAV's own ffmpeg may still refuse the GPU encoder: find out before any frame
            try:
                self._stream.codec_context.open()
            except (OSError, ValueError) as exc:
                hardware_encode_failed(codec, str(exc))
                self._container.close()
                self._add_stream(CPU_ENCODER, width, height)

    def _add_stream(self, codec: str, width: int, height: int) -> None:
        self._container = _pyav().open(self._video_tmp, "w")
        gaps = np.diff(self.timestamps)
        rate = Fraction(1 / float(np.median(gaps))).limit_denominator(1001) if len(gaps) else Fraction(25)
        self._stream = self._container.add_stream(codec, rate=rate, options=encoder_settings(codec, self.crf))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = self.time_base
        self._stream.codec_context.time_base = self.time_base
        if self.tag_colors:  # as converted: tagged, not left to players
            self._stream.codec_context.colorspace = OUTPUT_COLORSPACE
            self._stream.codec_context.color_range = OUTPUT_COLOR_RANGE
        self._stream.codec_context.sample_aspect_ratio = self.sample_aspect

    def write(self, frame: np.ndarray) -> None:
        """Write the next frame (at the next timestamp)."""
        if self.frames_written >= len(self.timestamps):
            raise InvalidVideoError(f"more frames than timestamps ({len(self.timestamps)}) for {self.path}")
        frame = even_sides(frame)
        if self._container is None:
            self._open(frame.shape[1], frame.shape[0])
        video_frame = _pyav().VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = int(round(self.timestamps[self.frames_written] / self.time_base))
        video_frame.time_base = self.time_base
        try:
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)
        except OSError as exc:  # PyAV's errors are OSErrors: a full disk, a write error
            raise self._write_error(exc) from None
        self.frames_written += 1

    def _write_error(self, exc: OSError) -> InvalidOutputError:
        return InvalidOutputError(f"cannot write {self.path}: {exc.strerror or exc}")

    def close(self) -> None:
        if self._container is None:
            raise InvalidVideoError("no frames to write")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except OSError as exc:
            raise self._write_error(exc) from None
        self._container = None
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", self._video_tmp]
        if self.audio_path:
            cmd += ["-i", ffmpeg_path(self.audio_path), "-map", "0:v:0", "-map", "1:a:0", "-af", MUXED_SOUND_FILTER, "-c:a", "aac"]
        cmd += ["-c:v", "copy", self._tmp]
        proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            self.abort()
            raise InvalidOutputError(f"cannot write {self.path}: "
                                     f"{ffmpeg_reason(proc.stderr.decode(errors='replace'), proc.returncode)}")
        os.remove(self._video_tmp)
        release_partial(self._video_tmp)
        os.replace(self._tmp, self.path)
        release_partial(self._tmp)

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the encoder may already be broken; we only clean up
                pass
            self._container = None
        for tmp in (self._tmp, self._video_tmp):
            if os.path.exists(tmp):
                os.remove(tmp)
            release_partial(tmp)

