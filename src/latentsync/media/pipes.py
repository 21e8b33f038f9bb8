"""Live media through pipes: speech read chunk by chunk from a pipe (any format ffmpeg reads), and frames written
as they come, as fragmented MP4 (playable while it is written, with the sound) or as raw RGB frames."""

from __future__ import annotations

import logging
import os
import queue
import select
import subprocess
import threading
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import BinaryIO

import imageio_ffmpeg
import numpy as np

from ..errors import InvalidAudioError, InvalidVideoError
from .constants import SAMPLE_RATE
from .files import ffmpeg_path
from .video import color_arguments, encoder_arguments, usable_encoder

logger = logging.getLogger(__name__)

LIVE_FORMATS = ("mp4", "raw")
"""What a live sink writes: fragmented MP4 (H.264 + AAC) or raw RGB24 frames."""


_WAV_PCM_FORMATS = {8: "u8", 16: "s16le", 24: "s24le", 32: "s32le"}
"""ffmpeg's raw format of a plain PCM WAV's samples (format tag 1), by bits per sample."""
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)  # data sizes that streaming writers put in a header they cannot seek


def _read_exactly(fd: int, count: int) -> bytes:
    """``count`` bytes from the file descriptor ``fd`` (fewer at the end of the stream), nothing more: what is not
    read stays in the pipe for ffmpeg."""
    data = b""
    while len(data) < count:
        part = os.read(fd, count - len(data))
        if not part:
            break
        data += part
    return data


def _read_wav_header(fd: int) -> tuple[bytes, list[str] | None]:
    """Read the header of a plain PCM WAV stream (format tag 1) from ``fd``, up to its samples: returns ``(b"",
    input options of ffmpeg's raw demuxer for the samples that follow)``. Any other stream: ``(the bytes read,
    None)``, to be given to ffmpeg ahead of the rest.

    ffmpeg's WAV demuxer reads 64 KiB of such a WAV before it starts (it looks for S/PDIF data in the samples): 2 s
    of 16 kHz mono, and all of a shorter utterance, until the pipe closes. Raw samples start at once. (Other WAVs,
    float or extensible, it does not search, and reads as they come.)"""
    head = _read_exactly(fd, 12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
        return head, None
    read, fmt = head, None
    while True:
        chunk = _read_exactly(fd, 8)
        read += chunk
        if len(chunk) < 8:
            return read, None
        name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if name == b"data":
            if fmt is None:
                return read, None
            options, bytes_per_second = fmt
            if size not in _WAV_UNKNOWN_SIZES:  # a known length: chunks after the samples are not samples
                options = [*options, "-t", f"{size / bytes_per_second:.9f}"]
            return b"", options
        if size > 1 << 20:  # not a header chunk
            return read, None
        body = _read_exactly(fd, size + size % 2)
        read += body
        if name == b"fmt " and len(body) >= 16:
            tag, channels, rate = (int.from_bytes(body[a:b], "little") for a, b in ((0, 2), (2, 4), (4, 8)))
            bits = int.from_bytes(body[14:16], "little")
            sample_format = _WAV_PCM_FORMATS.get(bits)
            if tag != 1 or sample_format is None or not channels or not rate:
                return read, None  # float, extensible, compressed...: ffmpeg's own demuxer
            fmt = (["-f", sample_format, "-ar", str(rate), "-ac", str(channels)], rate * channels * bits // 8)


class _SourceFeeder:
    """Gives ffmpeg's standard input ``ahead`` (the bytes read to look for a WAV header), then the rest of the source
    ``fd`` as it arrives, from its own thread. [`stop`] ends the thread at once, also while the source stays open
    with nothing to read (a TTS pipe, standard input of a program that calls the command in-process): it waits for
    the source and for a stop pipe together. Where ``select.poll`` is missing (Windows) it blocks in the read, as a
    daemon thread."""

    def __init__(self, fd: int, ahead: bytes, proc: subprocess.Popen):
        self._fd, self._proc = fd, proc
        self._stop_read, self._stop_write = os.pipe() if hasattr(select, "poll") else (None, None)
        self._poller = None
        if self._stop_read is not None:  # waits for the source and the stop pipe together
            self._poller = select.poll()
            self._poller.register(fd, select.POLLIN)  # a regular file (``< speech.wav``) is always ready
            self._poller.register(self._stop_read, select.POLLIN)  # its write end closed: POLLHUP
        self._thread = threading.Thread(target=self._feed, args=(ahead,), name="latentsync-live-audio-in",
                                        daemon=True)
        self._thread.start()

    def _next(self) -> bytes:
        """The next bytes of the source; b"" at its end or once stopped."""
        if self._poller is not None and any(fd == self._stop_read for fd, _ in self._poller.poll()):
            return b""
        return os.read(self._fd, 1 << 16)

    def _feed(self, data: bytes) -> None:
        try:
            while data:
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
                data = self._next()
        except (OSError, ValueError):  # ffmpeg stopped (or was stopped) first; the source was closed
            pass
        finally:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            if self._stop_read is not None:
                os.close(self._stop_read)

    def stop(self) -> None:
        """Tell the thread to stop reading (a write to ffmpeg it is blocked in ends with ffmpeg)."""
        if self._stop_write is not None:
            os.close(self._stop_write)
            self._stop_write = None

    def join(self) -> None:
        """Wait for the thread, after [`stop`] and the end of ffmpeg (without ``select.poll``: never; it ends with
        the source)."""
        if self._stop_read is not None:
            self._thread.join()


def read_audio_chunks(source: BinaryIO, seconds: float = 0.2,
                      pcm: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Mono float32 16 kHz chunks of ``seconds`` from a byte stream (e.g. ``sys.stdin.buffer``) holding audio in
    any format ffmpeg reads from a pipe (WAV, MP3, Ogg...), decoded as it arrives; with ``pcm=(rate, channels)``
    the stream is headerless signed 16-bit little-endian PCM at that rate (what TTS engines' "raw" or "pcm"
    outputs are), which ffmpeg cannot recognise on its own. A PCM WAV's header is read here and its samples go to
    ffmpeg as raw PCM (see [`_read_wav_header`]).

    Raises:
        InvalidAudioError: ffmpeg cannot decode the stream, or it holds no samples.
    """
    fd, ahead = source.fileno(), b""
    if pcm is not None:
        raw = ["-f", "s16le", "-ar", str(pcm[0]), "-ac", str(pcm[1])]
    else:
        ahead, raw = _read_wav_header(fd)
        raw = raw or []
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", *raw, "-i", "pipe:0", "-map", "0:a:0",
           "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if ahead else source, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    feeder = _SourceFeeder(fd, ahead, proc) if ahead else None
    size = max(1, int(seconds * SAMPLE_RATE)) * 4
    received, ended = 0, False
    try:
        while True:
            data = proc.stdout.read(size)
            if not data:
                ended = True
                break
            usable = len(data) - len(data) % 4
            received += usable // 4
            yield np.frombuffer(data[:usable], dtype="<f4").copy()
    finally:
        if feeder is not None:  # its read of the source would outlast the reader on a pipe that stays open
            feeder.stop()
        if not ended:  # the reader stopped early (Ctrl-C, an error): ffmpeg may be blocked on a pipe that stays open
            proc.kill()
        proc.stdout.close()
        code = proc.wait()
        if feeder is not None:
            feeder.join()
        error = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
    if code != 0 or received == 0:
        # ffmpeg says "Invalid data found" of an empty pipe; headerless PCM it takes for some other format without an
        # audio stream, and then fails on the -map ("Error opening output files")
        if received == 0 and (not error or "Invalid data found" in error or "Error opening output" in error):
            raise InvalidAudioError("no audio arrived on the pipe: it was empty, or held nothing ffmpeg reads as "
                                    "audio (a format with a header: WAV, MP3, Ogg, FLAC...; headerless 16-bit PCM "
                                    "needs its rate and channels: --pcm RATE[:CHANNELS])")
        raise InvalidAudioError(f"cannot read audio from the pipe: {error.splitlines()[-1] if error else 'no samples'}")


def at_constant_rate(frames: Iterable[tuple[float, np.ndarray]], fps: float) -> Iterator[np.ndarray]:
    """Frames at their own presentation times (seconds, increasing) as a constant-rate sequence, for an output
    without timestamps (a pipe of raw frames, ffmpeg's raw video input): slot ``k`` (time ``k / fps``) shows the
    frame on screen at that time, so frames are repeated or dropped and the picture stays in step with the sound
    whatever the spacing of the timestamps; the last frame lasts one slot."""
    slot, shown, last = 0, None, 0.0
    for time, image in frames:
        if shown is not None:
            while slot / fps < time - 1e-6:
                yield shown
                slot += 1
        shown, last = image, time
    if shown is not None:
        while slot / fps < last + 1 / fps - 1e-6:
            yield shown
            slot += 1


class LiveVideoSink:
    """Writes frames as they are produced to ``target`` (a file path, or ``"-"`` for standard output).

    ``"mp4"``: fragmented MP4, H.264 (low-latency settings; libx264, or the GPU ``encoder`` such as ``"h264_nvenc"``
    where it can start) with the speech as AAC, playable while written.
    ``"raw"``: RGB24 frames back to back (the size is logged), no sound.
    Use ``write_audio`` for the speech as it arrives and ``write`` for each frame; ``close`` completes the file. The
    speech of a frame must be written before the frame (as a live run has it): ffmpeg stops reading frames that run
    ahead of the sound, and ``write`` would then wait for sound that never comes.
    ``sample_aspect`` and ``tag_colors``: the pixels' shape and whether to record the YUV matrix, as the offline
    writer ([`latentsync.media.video.VideoWriter`]) takes them from the input (``FrameSource``).
    ``frames_written`` counts the frames given to ``write``; ``finished`` says whether ``close`` completed the output.
    """

    def __init__(self, target: str, fps: float, output_format: str = "mp4", crf: int = 18,
                 encoder: str | None = None, sample_aspect: Fraction = Fraction(1), tag_colors: bool = True):
        if output_format not in LIVE_FORMATS:
            raise InvalidVideoError(f"live output format must be one of {', '.join(LIVE_FORMATS)}, got "
                                    f"{output_format!r}")
        self.target, self.fps, self.format, self.crf, self.encoder = target, fps, output_format, crf, encoder
        self.sample_aspect, self.tag_colors = Fraction(sample_aspect), tag_colors
        self._out: BinaryIO | None = None
        self._proc: subprocess.Popen | None = None
        self._audio: queue.Queue | None = None
        self._audio_thread: threading.Thread | None = None
        self._pending_audio: list[np.ndarray] = []
        self._closed = False
        self.frames_written = 0
        self.finished = False

    def _open(self, width: int, height: int) -> None:
        if self.format == "raw":
            # open until close
            self._out = os.fdopen(os.dup(1), "wb") if self.target == "-" else open(self.target, "wb")  # noqa: SIM115
            logger.info("raw RGB24 frames, %d x %d at %g fps", width, height, self.fps)
            return
        codec = usable_encoder(self.encoder)
        shape = "pad=ceil(iw/2)*2:ceil(ih/2)*2"
        if self.sample_aspect != 1:  # an anamorphic input: played as wide as it is
            shape += f",setsar={self.sample_aspect.numerator}/{self.sample_aspect.denominator}"
        read_fd, write_fd = os.pipe()
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{self.fps}", "-i", "pipe:0",
               "-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", f"pipe:{read_fd}",
               "-map", "0:v", "-map", "1:a", "-c:v", codec, *encoder_arguments(codec, self.crf, live=True),
               "-pix_fmt", "yuv420p", "-vf", shape, *(color_arguments() if self.tag_colors else []),
               "-c:a", "aac", "-f", "mp4", "-movflags", "frag_keyframe+empty_moov+default_base_moof",
               "pipe:1" if self.target == "-" else ffmpeg_path(self.target)]
        # its own session: Ctrl-C in a terminal reaches the whole process group, and ffmpeg would quit at once
        # ("Immediate exit requested"); the run closes it instead, so that the frames sent so far are written
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=None, pass_fds=(read_fd,),
                                      start_new_session=True)
        os.close(read_fd)
        self._audio = queue.Queue()
        audio_out = os.fdopen(write_fd, "wb")

        def feed() -> None:  # its own thread: ffmpeg reads both inputs at its own pace
            try:
                while (item := self._audio.get()) is not None:
                    audio_out.write(item.astype("<f4").tobytes())
            except BrokenPipeError:
                pass
            finally:
                try:
                    audio_out.close()
                except BrokenPipeError:  # samples still buffered, for an ffmpeg that is gone
                    pass

        self._audio_thread = threading.Thread(target=feed, name="latentsync-live-audio", daemon=True)
        self._audio_thread.start()
        for samples in self._pending_audio:
            self._audio.put(samples)
        self._pending_audio = []

    def write_audio(self, samples: np.ndarray) -> None:
        """The next speech samples (16 kHz mono float), muxed with the frames (``"mp4"`` only)."""
        if self.format != "mp4":
            return
        if self._audio is None:
            self._pending_audio.append(samples)
        else:
            self._audio.put(samples)

    def write(self, frame: np.ndarray) -> None:
        """The next frame (RGB uint8)."""
        if self._out is None and self._proc is None:
            self._open(frame.shape[1], frame.shape[0])
        data = np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
        (self._out if self._out is not None else self._proc.stdin).write(data)
        if self._out is not None:
            self._out.flush()
        self.frames_written += 1

    @property
    def started(self) -> bool:
        """Whether the output was begun (the first ``write`` opens the file, or starts ffmpeg)."""
        return self._out is not None or self._proc is not None

    def close(self) -> None:
        """Complete the output (ffmpeg writes its last fragment); once only, later calls do nothing. An interrupt
        (Ctrl-C) or an error while it waits still ends ffmpeg (killed) and the audio thread before it goes on: the
        output then holds the fragments ffmpeg had written, and ``finished`` stays False.

        Raises:
            InvalidVideoError: ffmpeg failed.
        """
        if self._closed:
            return
        self._closed = True
        if self._out is not None:
            self._out.close()
        if self._proc is not None:
            try:
                self._audio.put(None)
                self._audio_thread.join()
                self._proc.stdin.close()
                code = self._proc.wait()
            except BaseException:
                self._kill()
                raise
            if code != 0:
                raise InvalidVideoError(f"ffmpeg could not write the live output to {self.target}")
        self.finished = True

    def _kill(self) -> None:
        """End ffmpeg now, then its audio thread (a write it is blocked in fails once ffmpeg is gone)."""
        self._proc.kill()
        self._audio.put(None)
        try:
            self._proc.stdin.close()
        except OSError:  # the frames still buffered, to a pipe that is gone
            pass
        self._proc.wait()
        self._audio_thread.join()
