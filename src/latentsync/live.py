"""Live lip sync: speech arriving in chunks, lip-synced frames going out one 16-frame window at a time.

[`LiveSession`] is the push-style core (``push(samples)`` returns the frames that became ready; ``finish()`` the
rest), used by [`LatentSyncPipeline.stream`] (an iterator of audio chunks in, an iterator of frames out) and by the
app's live tab. The face comes from a prepared avatar ([`latentsync.avatar`], looped forward and backward for as
long as the speech lasts) or from live video frames (the face found frame by frame, with no look-ahead).

Latency and memory. A window of frames is generated as soon as the audio up to its end has arrived, so the first
frame comes one window of audio (16 frames, 0.64 s at 25 fps) plus the compute of one window after the speech
starts. Only the audio of the current 30 s Whisper window, the features of the previous one and one window of
frames are held, so memory stays flat over an unbounded stream (an avatar's frames are kept in a file on disk).

Audio features. The Whisper encoder sees the audio of its 30 s window received so far (zero-padded, as the official
code pads the last window of a file), and the log-mel is normalised by the loudest part received so far. A window
of frames is therefore generated exactly as an offline call on the audio received at that moment would generate
it: frames whose audio context reaches past the newest sample see it cut there, and because Whisper's attention
spans its whole window, every token also changes a little when later audio arrives. How much this differs from the
offline output on the whole audio is measured by ``benchmarks/live_stream.py``. Windows generated after the last
chunk (``finish``) are exactly those of the offline call. Streams longer than 30 s start a new Whisper window every
30 s, normalised by its own loudest part (offline uses the whole file's), so beyond 30 s the two differ a little more.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .audio_features.whisper import (
    TOKENS_PER_SECOND,
    WINDOW_MEL_FRAMES,
    _token_contexts,
    audio_contexts_at,
    log_mel,
    whisper_features,
)
from .avatar import Avatar
from .errors import InvalidAudioError, InvalidVideoError, LatentSyncInputError
from .face.alignment import FaceAligner
from .face.detection import FaceDetector
from .media.audio import num_video_frames
from .media.constants import SAMPLE_RATE, VIDEO_FPS
from .media.timeline import frame_durations
from .streaming import pingpong_at
from .tempfiles import make_work_dir, remove_work_dir

if TYPE_CHECKING:
    from typing_extensions import Self

    from .pipeline import LatentSyncPipeline

logger = logging.getLogger("latentsync")

WINDOW_SAMPLES = WINDOW_MEL_FRAMES * 160  # 30 s: one Whisper window of audio
WINDOW_TOKENS = WINDOW_MEL_FRAMES // 2
KEPT_TOKENS = 8  # tokens of the previous Whisper window that frames just after its end still look at


def _now() -> float:
    """The clock of a live session's figures (seconds; monotonic)."""
    return time.perf_counter()


@dataclass
class LiveStats:
    """Measured timings of a live stream so far ([`LiveSession.stats`], ``LiveStream.stats``); wall-clock seconds.

    Attributes:
        frames, windows: frames made, and the windows (calls of the model) that made them.
        media_seconds: how long those frames last on the stream's timeline.
        compute_seconds: the time spent making them (audio features, denoising, decoding, paste-back).
        first_frame: from the first speech pushed to the first frame ready (the wait for one window of audio plus
            its compute), or None before the first frame.
        latency_mean, latency_max: per window, from the push that completed its input (audio, or live video
            frames; ``finish`` for the last window) to its frames being ready; ``latency_p50`` and
            ``latency_p95`` are their percentiles (to the millisecond, over the whole stream).
        late_windows: windows ready after a player showing the stream from its first frame would have shown their
            first frame: each one a stall of the picture (the stream did not keep up), after which the player
            resumes with that window.
    """

    frames: int = 0
    windows: int = 0
    media_seconds: float = 0.0
    compute_seconds: float = 0.0
    first_frame: float | None = None
    latency_mean: float = 0.0
    latency_max: float = 0.0
    late_windows: int = 0
    # window latencies in whole milliseconds, with their counts: percentiles over an endless stream in bounded memory
    _latency_ms: Counter = field(default_factory=Counter, repr=False, compare=False)

    @property
    def realtime_factor(self) -> float | None:
        """Seconds of video made per second of compute (above 1: faster than real time), or None before any."""
        return self.media_seconds / self.compute_seconds if self.compute_seconds > 0 else None

    def latency_percentile(self, percent: float) -> float | None:
        """The window latency below which ``percent`` % of the windows' fall (nearest rank: a measured latency, to
        the millisecond), or None before any window."""
        if not self.windows:
            return None
        rank, seen = max(1, math.ceil(percent / 100 * self.windows)), 0
        for ms in sorted(self._latency_ms):
            seen += self._latency_ms[ms]
            if seen >= rank:
                break
        return min(ms / 1000, self.latency_max)  # never above the max for a latency rounded up

    @property
    def latency_p50(self) -> float | None:
        """The median window latency (see [`latency_percentile`])."""
        return self.latency_percentile(50)

    @property
    def latency_p95(self) -> float | None:
        """The 95th percentile of the window latency (see [`latency_percentile`])."""
        return self.latency_percentile(95)

    def add_window(self, frames: int, media_seconds: float, compute_seconds: float, latency: float,
                   late: bool) -> None:
        """Count one window made: its frames, how long they last, its compute and latency, whether it was late."""
        self.latency_mean = (self.latency_mean * self.windows + latency) / (self.windows + 1)
        self.latency_max = max(self.latency_max, latency)
        self._latency_ms[round(latency * 1000)] += 1
        self.frames, self.windows = self.frames + frames, self.windows + 1
        self.media_seconds += media_seconds
        self.compute_seconds += compute_seconds
        self.late_windows += bool(late)

    def _latencies(self) -> str:
        return (f"window latency mean {self.latency_mean:.2f} s, p50 {self.latency_p50:.2f} s, p95 "
                f"{self.latency_p95:.2f} s, max {self.latency_max:.2f} s; {self.late_windows} of {self.windows} "
                f"windows late")

    def summary(self) -> str:
        """The figures in one line (for a log)."""
        if not self.windows:
            return "no frames made"
        return (f"first frame {self.first_frame:.2f} s after the speech began; {self._latencies()}; compute "
                f"{self.compute_seconds:.2f} s for {self.media_seconds:.2f} s of video ({self.windows} windows): "
                f"{self.realtime_factor:.2f}x real time")


class LiveStatsLog:
    """A running live stream's figures in the log as it goes: call it after each frame (or window); at most every
    ``every`` seconds of wall-clock time, and only after a new window, it logs one line (frames/s since the last
    line, window latency percentiles, late windows, speed against real time). Lines come as windows are made: a
    stream waiting for speech logs none."""

    def __init__(self, stats: LiveStats, every: float = 5.0, log: Callable[[str], None] | None = None):
        if not every > 0:
            raise LatentSyncInputError(f"the interval of the live figures must be > 0 seconds, got {every}")
        self.stats, self.every = stats, every
        self._log = log or (lambda line: logger.info("live: %s", line))
        self._last_at, self._last_frames, self._last_windows = _now(), 0, 0

    def __call__(self) -> None:
        """Log a line if ``every`` seconds have passed since the last one and a window was made since."""
        now = _now()
        if now - self._last_at < self.every or self.stats.windows == self._last_windows:
            return
        stats = self.stats
        rate = (stats.frames - self._last_frames) / (now - self._last_at)
        self._log(f"{stats.frames} frames ({stats.media_seconds:.1f} s of video), {rate:.1f} frames/s over the last "
                  f"{now - self._last_at:.1f} s; {stats._latencies()}; {stats.realtime_factor:.2f}x real time")
        self._last_at, self._last_frames, self._last_windows = now, stats.frames, stats.windows


@dataclass
class LiveFrame:
    """One lip-synced frame of a live stream.

    Attributes:
        index: its number in the stream (from 0).
        time: its presentation time in seconds from the start of the speech.
        image: RGB uint8 ``(H, W, 3)``.
    """

    index: int
    time: float
    image: np.ndarray


def as_chunk(chunk: Any) -> np.ndarray:
    """A chunk of live audio as mono float32 16 kHz samples (NumPy array or tensor; may be empty).

    Raises:
        InvalidAudioError: not one-dimensional, or NaN / infinite samples.
    """
    if isinstance(chunk, torch.Tensor):
        chunk = chunk.detach().cpu().float().numpy()
    samples = np.asarray(chunk, dtype=np.float32)
    if samples.ndim == 2 and 1 in samples.shape:
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise InvalidAudioError(f"audio chunks must be mono 16 kHz samples (one dimension), got shape "
                                f"{samples.shape}")
    if not np.isfinite(samples).all():
        raise InvalidAudioError("an audio chunk contains NaN or infinity")
    return samples


class LiveAudioFeatures:
    """Whisper token features of audio that arrives in chunks, from the audio received so far (see the module
    docstring): the current 30 s window's samples and the last tokens of the previous window are kept."""

    def __init__(self, feature_extractor: Any, encoder: torch.nn.Module):
        self.feature_extractor, self.encoder = feature_extractor, encoder
        self.received = 0  # samples received in all
        self._window = 0  # number of the current 30 s window
        self._chunks: list[np.ndarray] = []  # its samples received so far
        self._previous: torch.Tensor | None = None  # the last KEPT_TOKENS tokens of the previous window
        self._current: torch.Tensor | None = None  # features of the current window (None: to compute)

    @property
    def seconds(self) -> float:
        return self.received / SAMPLE_RATE

    def push(self, samples: np.ndarray) -> None:
        """Add received samples (16 kHz mono float)."""
        while len(samples):
            room = (self._window + 1) * WINDOW_SAMPLES - self.received
            part, samples = samples[:room], samples[room:]
            self._chunks.append(part)
            self.received += len(part)
            self._current = None
            if self.received == (self._window + 1) * WINDOW_SAMPLES:  # the window is complete: keep its tail
                self._previous = self._features()[-KEPT_TOKENS:]
                self._window, self._chunks, self._current = self._window + 1, [], None

    def _features(self) -> torch.Tensor:
        if self._current is None:
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
            if len(audio) < 320:  # less than one token: nothing to encode yet
                shape = (0, self.encoder.num_feature_states, self.encoder.config.d_model)
                self._current = torch.zeros(shape)
            else:
                self._current = whisper_features(log_mel(audio, self.feature_extractor), self.encoder)
        return self._current

    def contexts(self, frame_indices: np.ndarray | None = None, times: np.ndarray | None = None) -> torch.Tensor:
        """Cross-attention contexts of frames, by 25 fps frame index or by time (seconds): as
        [`~latentsync.audio_features.frame_audio_contexts`] and [`~latentsync.audio_features.audio_contexts_at`]
        on the features of the audio received so far."""
        current = self._features()
        first = self._window * WINDOW_TOKENS  # the token number of current[0]
        parts = [current]
        if self._previous is not None:
            parts.insert(0, self._previous)
            first -= len(self._previous)
        features = torch.cat(parts)
        if len(features) == 0:
            raise InvalidAudioError("audio is too short to compute any features")
        if times is None:
            centre = torch.as_tensor(np.asarray(frame_indices)) * (TOKENS_PER_SECOND // VIDEO_FPS) - first
            return _token_contexts(features, centre.long())
        return audio_contexts_at(features, np.asarray(times) - first / TOKENS_PER_SECOND)


class _FrameFile:
    """A video's frames in a raw file on disk, read back one at a time (plain reads, not a memory map, so that
    the resident memory does not grow with the video). The file is in a work folder of this process
    ([`make_work_dir`]): the next run removes it when this one was killed."""

    def __init__(self, frames: Iterable[np.ndarray]):
        self._dir = make_work_dir("live")
        self.path = os.path.join(self._dir, "frames.u8")
        self.shape: tuple[int, ...] | None = None
        self.count = 0
        try:
            with open(self.path, "wb") as fh:
                for frame in frames:
                    self.shape = frame.shape
                    fh.write(np.ascontiguousarray(frame).tobytes())
                    self.count += 1
            self._fh = open(self.path, "rb")
        except BaseException:
            remove_work_dir(self._dir)
            raise

    def __getitem__(self, j: int) -> np.ndarray:
        frame = np.empty(self.shape, np.uint8)
        nbytes = frame.nbytes
        self._fh.seek(int(j) * nbytes)
        if self._fh.readinto(frame.reshape(-1)) != nbytes:
            raise InvalidVideoError(f"avatar frame cache is truncated at frame {j}")
        return frame

    def close(self) -> None:
        self._fh.close()
        remove_work_dir(self._dir)


class LiveSession:
    """One live stream (see the module docstring). Create it with [`LatentSyncPipeline.live_session`], or use
    [`LatentSyncPipeline.stream`].

    ``push(samples)`` adds speech and returns the frames that became ready (a whole window at a time); with live
    video, ``push_frames(frames)`` adds video frames (taken to be at ``fps``). ``finish()`` returns the frames that
    remain once the speech has ended, and releases the session's files. ``stats`` ([`LiveStats`]) holds the
    measured time to the first frame, the latency of the windows and the speed against real time so far.
    """

    def __init__(self, pipe: "LatentSyncPipeline", avatar: Avatar | None = None, live_video: bool = False,
                 fps: float = VIDEO_FPS, num_inference_steps: int = 20, guidance_scale: float = 1.5,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None, num_frames: int = 16):
        if (avatar is None) == (not live_video):
            raise LatentSyncInputError("a live stream needs either a prepared avatar or live video frames")
        self.pipe, self.avatar, self.num_frames = pipe, avatar, num_frames
        self.steps, self.guidance_scale, self.generator = num_inference_steps, guidance_scale, generator
        pipe._guidance_scale, pipe._interrupt, pipe._num_timesteps = guidance_scale, False, num_inference_steps
        # the initial noise first, before any VAE sample (the order of random draws of an offline call)
        self.latents = pipe.prepare_latents(pipe.unet.dtype, pipe._execution_device, generator, latents)
        self.audio = LiveAudioFeatures(pipe.feature_extractor, pipe.audio_encoder)
        self.aligner = FaceAligner(pipe.config.resolution)
        self.next_index = 0
        self._finished = self._closed = False
        self._clock: deque[float] = deque()  # times of frames next_index, next_index + 1, ...
        self._clock_index, self._clock_sum = 0, 0.0
        self.stats = LiveStats()
        self._started: float | None = None  # when the first speech was pushed
        self._playback: float | None = None  # when a player showing the stream from its first frame shows time 0
        self._input_at = 0.0  # when the push that may complete the next window began
        if avatar is not None:
            self.fps = float(VIDEO_FPS) if avatar.fps == "input" else float(avatar.fps)
            self._timestamps = avatar.timestamps  # None: frame k at k / fps
            self._durations = frame_durations(avatar.timestamps) if avatar.timestamps is not None else None
            self._frames = avatar.frames if avatar.frames is not None else _FrameFile(avatar.frame_source())
        else:
            self.fps, self._timestamps = float(fps), None
            self._detector = FaceDetector()
            self._pending: deque[tuple[np.ndarray, np.ndarray | None]] = deque()  # frames with their matrix

    # ------------------------------------------------------------------ input
    def push(self, samples: Any) -> list[LiveFrame]:
        """Add a chunk of speech (mono float 16 kHz); returns the frames whose window became ready."""
        self._input_at = _now()
        samples = as_chunk(samples)
        if self._started is None and len(samples):
            self._started = self._input_at
        self.audio.push(samples)
        return self._ready()

    def push_frames(self, frames: Iterable[np.ndarray]) -> list[LiveFrame]:
        """Add live video frames (RGB uint8, at ``fps``); returns the frames whose window became ready."""
        if self.avatar is not None:
            raise LatentSyncInputError("this live stream lip-syncs a prepared avatar: it takes no video frames")
        self._input_at = _now()
        for frame in frames:
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
                raise InvalidVideoError(f"live video frames must be RGB uint8 (H, W, 3), got {frame.dtype} "
                                        f"{frame.shape}")
            anchors = self._detector.anchors(frame)
            self._pending.append((frame, self.aligner.matrix(anchors) if anchors is not None else None))
        return self._ready()

    def finish(self) -> list[LiveFrame]:
        """The speech has ended: the remaining frames (as many as the speech covers, as offline), then close."""
        if self._finished:
            return []
        self._finished = True
        self._input_at = _now()
        try:
            total = self._total_frames(self.audio.received)
            if self.avatar is None:
                total = min(total, self.next_index + len(self._pending))
            out = []
            while self.next_index < total:
                out += self._generate(min(self.num_frames, total - self.next_index))
            return out
        finally:
            self.close()

    @property
    def finished(self) -> bool:
        return self._finished

    def close(self) -> None:
        """Release the session's files (and the face detector); once (later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        if self.avatar is not None and isinstance(self._frames, _FrameFile):
            self._frames.close()
        elif self.avatar is None:
            self._detector.close()

    # ------------------------------------------------------------------ timeline
    def _time(self, k: int) -> float:
        """The presentation time of frame ``k`` (not yet generated): ``k / fps``, or on the avatar's own timeline,
        where a looped frame lasts as long as its source frame did (the same sums as the offline timeline)."""
        while self._clock_index <= k:
            i = self._clock_index
            if self._timestamps is None:
                t = i / self.fps
            elif i < len(self._timestamps):
                t = float(self._timestamps[i])
            else:
                self._clock_sum += float(self._durations[int(pingpong_at(i - 1, len(self._timestamps)))])
                t = float(self._timestamps[-1]) + self._clock_sum
            self._clock.append(t)
            self._clock_index += 1
        return self._clock[k - self.next_index]

    def _total_frames(self, samples: int) -> int:
        """How many frames an offline call makes for ``samples`` of speech."""
        if self._timestamps is None:
            return num_video_frames(samples, fps=self.fps)
        seconds, count = samples / SAMPLE_RATE, self.next_index
        while self._time(count) < seconds - 1e-9:
            count += 1
        return max(count, 1)

    # ------------------------------------------------------------------ generation
    def _ready(self) -> list[LiveFrame]:
        out = []
        while self.audio.seconds >= self._time(self.next_index + self.num_frames) - 1e-9 and (
                self.avatar is not None or len(self._pending) >= self.num_frames):
            out += self._generate(self.num_frames)
        return out

    def _window_frames(self, count: int) -> tuple[list[np.ndarray], list[np.ndarray | None], list[int]]:
        """The next ``count`` frames, the alignment matrix of each (None: no face) and their source frames."""
        if self.avatar is None:
            pending = [self._pending.popleft() for _ in range(count)]
            return [f for f, _ in pending], [m for _, m in pending], [-1] * count
        sources = [int(j) for j in pingpong_at(np.arange(self.next_index, self.next_index + count),
                                               self.avatar.num_frames)]
        return [self._frames[j] for j in sources], [self.avatar.matrices[j] for j in sources], sources

    def _generate(self, count: int) -> list[LiveFrame]:
        """The next ``count`` frames ([`_make`]), timed into [`stats`]."""
        began = _now()
        duration = self._time(self.next_index + count) - self._time(self.next_index)
        frames = self._make(count)
        done = _now()
        stats, start = self.stats, frames[0].time
        if self._playback is None:  # the first window: the player starts with it
            self._playback = done - start
        late = done > self._playback + start + 1e-6
        if late:  # the player stalled and resumes with this window
            self._playback = done - start
        stats.add_window(count, duration, done - began, done - self._input_at, late)
        if stats.first_frame is None:
            stats.first_frame = done - (self._started if self._started is not None else began)
        return frames

    @torch.no_grad()
    def _make(self, count: int) -> list[LiveFrame]:
        pipe = self.pipe
        clock = np.array([self._time(self.next_index + k) for k in range(count)])
        times = None if self._timestamps is None and self.fps == VIDEO_FPS else clock  # None: frame indices
        frames, matrices, sources = self._window_frames(count)
        slots = [k for k, m in enumerate(matrices) if m is not None]
        if slots:
            with pipe._pinned_placement():  # one device and dtype lookup per window
                if self.avatar is not None:
                    faces = np.stack([self.avatar.crop(sources[k]) for k in slots])
                else:
                    faces = np.stack([self.aligner.align(frames[k], matrices[k]) for k in slots])
                condition = pipe.prepare_condition_latents(faces, self.generator, [sources[k] for k in slots], None,
                                                           self.avatar)
                if times is None:
                    audio_embeds = self.audio.contexts(frame_indices=self.next_index + np.asarray(slots))
                else:
                    audio_embeds = self.audio.contexts(times=times[slots])
                latents = pipe.denoise(self.latents, condition, audio_embeds, self.steps, self.guidance_scale,
                                       self.generator)
                for k, face in zip(slots, pipe.decode_latents(latents)):
                    frames[k] = self.aligner.paste(frames[k], face, matrices[k])
        start = self.next_index
        for _ in range(count):
            self._clock.popleft()
        self.next_index += count
        return [LiveFrame(start + k, float(clock[k]), frames[k]) for k in range(count)]


def stream_frames(session: LiveSession, audio_chunks: Iterable[Any],
                  frames: Iterable[np.ndarray] | None = None) -> Iterator[LiveFrame]:
    """Drive ``session`` with an iterator of audio chunks (and, for live video, an iterator of frames read
    alongside: as many frames as each chunk covers) and yield its frames in order. Closing the generator (or an
    error) closes the session."""
    video = iter(frames) if frames is not None else None
    video_frames = 0
    try:
        for chunk in audio_chunks:
            ready = session.push(chunk)
            if video is not None:  # read the frames that the audio received so far covers
                want = int(np.ceil(session.audio.seconds * session.fps - 1e-9)) - video_frames
                new = [f for _, f in zip(range(max(want, 0)), video)]
                video_frames += len(new)
                ready += session.push_frames(new)
            yield from ready
        yield from session.finish()
    finally:
        if not session.finished:
            session.close()


class LiveStream(Iterator[LiveFrame]):
    """The frames of a live stream, in order, as [`LatentSyncPipeline.stream`] returns them: an iterator with the
    stream's figures as they are measured (``stats``, a [`LiveStats`]) and its ``session``. ``close()`` (or leaving
    a ``with`` block) stops the stream early and releases the session's files; iterating to the end does too."""

    def __init__(self, session: LiveSession, audio_chunks: Iterable[Any],
                 frames: Iterable[np.ndarray] | None = None):
        self.session = session
        self._frames = stream_frames(session, audio_chunks, frames)

    @property
    def stats(self) -> LiveStats:
        """The stream's figures so far (updated after each window)."""
        return self.session.stats

    def __next__(self) -> LiveFrame:
        return next(self._frames)

    def close(self) -> None:
        """Stop the stream (no more frames) and release its session."""
        self._frames.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
