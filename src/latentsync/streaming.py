"""Streaming a video through the pipeline in bounded memory.

A [`VideoStream`] holds the two passes of one pipeline call over the input video:

1. [`VideoStream.track_faces`] decodes every frame once to follow every face through the video (only as far as
   the output needs when the video is longer than the audio; and, when the output will loop far back over the
   video, writes the decoded frames to an on-disk cache); [`VideoStream.assign`]
   then takes the chosen face tracks, one group per voice ([`VideoStream.analyze`] does both for the largest face);
2. [`VideoStream.windows`] decodes the video a second time, in output order, and yields windows of frames with
   their aligned faces, per voice; [`VideoStream.write`] pastes the regenerated mouths back and encodes the frames.

The output follows the audio: a longer video is trimmed, a shorter one plays forward and backward
([`pingpong_indices`], as the official code loops). Frames shown again are read from a small in-memory tail when the
output loops back by a few frames, else from the disk cache. With ``overlap_stages`` decoding and alignment run one
window ahead in a background thread ([`prefetch`]) and paste-back and encoding run behind in another
([`OrderedWorker`]), while the model denoises; every queue is bounded, so memory stays constant whatever the video
length.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InvalidVideoError, LatentSyncInputError, NoFaceError
from .face.alignment import FaceAligner
from .face.selection import FaceSelection, select_faces
from .face.tracking import FaceTrack, FaceTracker, FaceTracks, combined_anchors
from .inputs import warn
from .media.audio import Track, VoiceMix, copy_track, track_index, write_wav
from .media.constants import VIDEO_FPS
from .media.timeline import DEFAULT_TIME_BASE, TimedVideoWriter
from .media.video import FrameSource, VideoWriter
from .tempfiles import make_work_dir, remove_work_dir
from .utils import StageTimer

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TAIL_FRAMES = 32
"""An output at most this many frames longer than the video (or a video this short) loops from frames kept in
memory; longer loops read the decoded video back from a cache on disk."""


MIN_FACE_FRAME_SIDE = 64
"""Frames smaller than this (either side) rarely show a face the detector can find; the no-face error says so."""


def pingpong_indices(num_source: int, num_output: int) -> np.ndarray:
    """Source frame for each output frame: the video plays forward, backward, forward... (official looping)."""
    i = np.arange(num_output)
    if num_output <= num_source:
        return i
    return pingpong_at(i, num_source)


def pingpong_at(outputs: np.ndarray, num_source: int) -> np.ndarray:
    """The source frame of the output frames ``outputs`` (any indices, e.g. of an unbounded stream) under
    [`pingpong_indices`]'s looping."""
    k = np.asarray(outputs) % (2 * num_source)
    return np.where(k < num_source, k, 2 * num_source - 1 - k)


# ---------------------------------------------------------------------------------------------------- threads
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(iterator: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run ``iterator`` in a background thread, at most ``depth`` items ahead of the consumer."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer thread
            put(_Failure(exc))
        finally:
            if hasattr(iterator, "close"):  # stop what feeds it now (an ffmpeg decoder), not when it is collected
                iterator.close()

    thread = threading.Thread(target=run, name="latentsync-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class OrderedWorker:
    """Runs submitted calls one after another in a background thread, keeping at most ``depth`` pending.

    ``submit`` blocks when the backlog is full and re-raises the first failure; ``close`` waits for the rest.
    """

    def __init__(self, fn: Callable[..., None], depth: int = 2):
        self._fn = fn
        self._depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentsync-writer")
        self._pending: deque[Future] = deque()

    def allow_pending(self, depth: int) -> None:
        """Keep up to ``depth`` calls pending (never fewer than before)."""
        self._depth = max(self._depth, depth)

    def submit(self, *args: Any) -> None:
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._fn, *args))

    def close_quietly(self) -> None:
        """Drop the backlog without raising (used while another error propagates)."""
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------- latents
class LatentCache:
    """VAE latents (reference, masked) of source frames that a looping video shows again.

    ``uses`` counts how often each source frame will be generated; an entry is kept only while later uses remain
    and freed after the last one, so the cache never holds more than one entry per source frame (on the CPU).
    ``encoded`` counts the frames actually run through the VAE encoder.
    """

    def __init__(self, uses: Counter):
        self.uses = uses
        self.entries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.encoded = 0

    def get(self, key: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.entries.get(key)

    def put(self, key: int, ref: torch.Tensor, masked: torch.Tensor) -> None:
        if self.uses[key] > 1:
            self.entries[key] = (ref.cpu(), masked.cpu())

    def release(self, key: int) -> None:
        """Count one use of ``key`` as done; drop its entry after the last."""
        self.uses[key] -= 1
        if self.uses[key] <= 0:
            self.entries.pop(key, None)


# ---------------------------------------------------------------------------------------------------- the stream
@dataclass
class FaceGroup:
    """The faces of one voice in a window (denoised together, with that voice's audio).

    Attributes:
        voice: the voice's number.
        slots: positions in the window of the frames where the voice's face is.
        faces: those frames' aligned faces ``(len(slots), R, R, 3)`` uint8.
        frame_indices: output frame index of each face (where its audio context is taken).
        sources: source frame of each face (the key of the voice's latent cache).
    """

    voice: int
    slots: list[int]
    faces: np.ndarray
    frame_indices: np.ndarray
    sources: list[int]


@dataclass
class FrameWindow:
    """Consecutive output frames that are denoised together.

    Attributes:
        start: index of the window's first output frame.
        source_indices: the source frame each output frame shows.
        frames: the decoded frames (RGB uint8); paste-back replaces the faces in them.
        groups: the aligned faces in the window, one group per voice that has a face in it.
    """

    start: int
    source_indices: np.ndarray
    frames: list[np.ndarray]
    groups: list[FaceGroup]


def _plain_progress(iterable: Any, desc: str, total: int | None = None) -> tqdm:
    return tqdm(iterable, desc=desc, total=total)


@contextmanager
def _writing_frame_cache(path: str) -> Iterator[None]:
    """A failed write of the frame cache at ``path`` (a full temporary folder) as one line that names the folder and
    how to choose another, instead of the ``OSError``'s traceback."""
    try:
        yield
    except OSError as exc:
        raise LatentSyncInputError(
            f"cannot keep the video's frames in {os.path.dirname(path)}: {exc.strerror or exc} (the output loops over "
            "the video, so its decoded frames are cached there; set TMPDIR to a folder with more room)") from None


class VideoStream:
    """The passes of one pipeline call over its input video, and the output they produce (see the module docstring).

    Use it as a context manager: it owns a work folder (frame cache, audio copy; see [`latentsync.tempfiles`]: a
    later run removes it if this process is killed) and, on an error or an interrupt (Ctrl-C, SIGTERM), stops its
    threads and ffmpeg processes and removes the partly written output::

        with VideoStream(source, num_output_frames, resolution) as stream:
            stream.analyze()
            stream.open_output(output_path, audio, samples)
            for window in stream.windows(16):
                stream.write(window, new_faces)
            frames = stream.finish()

    Args:
        source: the input video at 25 fps.
        num_output_frames: length of the output (the audio's length in frames).
        resolution: side of the aligned faces.
        overlap_stages: decode/align and paste/encode in background threads (same output).
        timer: collects the busy seconds of ``decode``, ``face_detection``, ``alignment``, ``paste_back`` and
            ``encode``.
        progress: ``progress(iterable, desc, total)`` returns a progress bar (tqdm by default).
        aligner: the face aligner (default: OpenCV's [`FaceAligner`]; a
            [`~latentsync.face.warp.TorchFaceAligner`] warps and pastes on the GPU).
    """

    max_tail_frames = MAX_TAIL_FRAMES

    def __init__(self, source: FrameSource, num_output_frames: int, resolution: int, overlap_stages: bool = True,
                 timer: StageTimer | None = None, progress: Callable[..., Any] | None = None,
                 aligner: FaceAligner | None = None):
        self.source = source
        self.num_output_frames = num_output_frames
        self.aligner = aligner or FaceAligner(resolution)
        self.overlap_stages = overlap_stages
        self.timer = timer or StageTimer()
        self.progress = progress or _plain_progress
        self.cache_path: str | None = None
        self.frame_shape: tuple[int, ...] | None = None
        self.tracks: FaceTracks | None = None
        self.has_face: np.ndarray | None = None
        self.order: np.ndarray | None = None
        self.matrices: list[list[np.ndarray | None]] = []  # per voice, per source frame
        self.prepared_faces: Callable[[int], np.ndarray] | None = None  # aligned face of a source frame (avatar)
        self._num_prepared: int | None = None
        self.frames_submitted = 0
        self.writer: VideoWriter | None = None
        self.keep_frames = False
        self.kept: list[np.ndarray] = []
        self._sink: OrderedWorker | None = None
        self._windows: Iterator[FrameWindow] | None = None
        self._work_dir: str | None = None

    def __enter__(self) -> "VideoStream":
        self._work_dir = make_work_dir("run")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self.abort()
        finally:
            if self._work_dir is not None:
                remove_work_dir(self._work_dir)
                self._work_dir = None

    def _temp_path(self, name: str) -> str:
        if self._work_dir is None:
            raise RuntimeError("use VideoStream as a context manager (with VideoStream(...) as stream: ...)")
        return os.path.join(self._work_dir, name)

    @property
    def num_source_frames(self) -> int:
        if self._num_prepared is not None:
            return self._num_prepared
        return self.tracks.num_frames if self.tracks is not None else 0

    @property
    def num_voices(self) -> int:
        return len(self.matrices)

    @property
    def frames_without_face(self) -> int:
        """Output frames written so far that pass through unchanged (no face)."""
        if self.order is None:
            return 0
        return int((~self.has_face[self.order[: self.frames_submitted]]).sum())

    @property
    def loops(self) -> bool:
        """Whether the output shows source frames more than once (the audio is longer than the video)."""
        return self.num_output_frames > self.num_source_frames

    # ------------------------------------------------------------------ pass 1
    def analyze(self, face_index: int | None = None, landmark_smoothing: float = 1.5) -> FaceSelection:
        """First pass and the choice of face in one: [`track_faces`], then the largest face of every shot (or track
        ``face_index``) through [`assign`].

        Raises:
            InvalidVideoError: the video has no frames.
            NoFaceError: no frame has a face.
            LatentSyncInputError: there is no track ``face_index``.
        """
        selection = select_faces(self.track_faces(), face_index=face_index)
        self.assign(selection.voices, landmark_smoothing)
        return selection

    def track_faces(self, max_frames: int | None = None) -> FaceTracks:
        """First pass: every face followed through the video ([`~latentsync.face.tracking.FaceTracker`]); with
        ``max_frames``, through its first ``max_frames`` frames only (the video then counts as that long).

        Raises:
            InvalidVideoError: the video has no frames.
            NoFaceError: no frame has a face, or (with ``face_index``) no frame has that many faces.
        """
        n_out, expected = self.num_output_frames, self.source.expected_frames
        # cache decoded frames on disk only when the output clearly loops back over more than a short tail
        if min(n_out - expected, expected) > self.max_tail_frames + 2:
            self.cache_path = self._temp_path("frames.u8")
        with FaceTracker() as tracker:
            self._read_first_pass(tracker, max_frames)
            self.tracks = tracker.result(self.source.label)
        if not any(t.has_landmarks for t in self.tracks):
            h, w = self.frame_shape[:2]
            small = f" (the frames are only {w}x{h} pixels)" if min(h, w) < MIN_FACE_FRAME_SIDE else ""
            raise NoFaceError(f"no face found in any frame of {self.source.label}{small}")
        n_src = self.tracks.num_frames
        if min(n_out - n_src, n_src) > self.max_tail_frames and self.cache_path is None:  # the estimate was off
            self._cache_all_frames()
        return self.tracks

    def _cache_all_frames(self) -> None:
        """Decode the whole video into the on-disk frame cache."""
        self.cache_path = self._temp_path("frames.u8")
        with _writing_frame_cache(self.cache_path), open(self.cache_path, "wb") as fh:
            for frame in self.source:
                fh.write(frame.tobytes())
                self.frame_shape = frame.shape

    def assign(self, voices: Sequence[Sequence[FaceTrack]], landmark_smoothing: float = 1.5) -> None:
        """The faces to regenerate: ``voices[v]`` are the tracks lip-synced to voice ``v`` (at most one face per
        frame and voice). Sets the output order and the alignment of every chosen face, its landmarks smoothed
        over time within each track (``landmark_smoothing``: Gaussian sigma in frames).

        Raises:
            NoFaceError: none of the tracks can be aligned.
        """
        n_src, n_out = self.num_source_frames, self.num_output_frames
        self.matrices = []
        for tracks in voices:
            anchors = combined_anchors(tracks, n_src, landmark_smoothing)
            self.matrices.append([self.aligner.matrix(a) if np.isfinite(a[0, 0]) else None for a in anchors])
        self.has_face = np.array([any(m[j] is not None for m in self.matrices) for j in range(n_src)], dtype=bool)
        if not self.has_face.any():
            raise NoFaceError(f"none of the chosen faces of {self.source.label} can be aligned")
        self.order = pingpong_indices(n_src, n_out)
        no_face = int((~self.has_face[self.order]).sum())
        if no_face:
            logger.warning("%d of %d output frames have no face to lip-sync and pass through unchanged", no_face,
                           n_out)
        face_size = self.face_size()
        if face_size < self.aligner.resolution:
            warn(f"the face in {self.source.label} is about {face_size:.0f} px, smaller than the model's "
                 f"{self.aligner.resolution} px faces: it is enlarged, so the new mouth may look soft")

    def face_size(self) -> float:
        """Median side (pixels of the video) of the region that becomes the aligned face (over every chosen face)."""
        scales = [np.sqrt(abs(np.linalg.det(m[:, :2]))) for voice in self.matrices for m in voice if m is not None]
        return float(self.aligner.resolution / np.median(scales)) if scales else float("nan")

    def use_prepared(self, matrices: Sequence[np.ndarray | None], faces: Callable[[int], np.ndarray]) -> None:
        """Instead of the first pass: the alignment of every source frame and its aligned face are known (a
        prepared avatar, one voice). Sets the output order; when the output loops far back over the video, the
        frames are decoded once into the on-disk cache (no face analysis).

        Raises:
            NoFaceError: no frame has a face.
        """
        n_src, n_out = len(matrices), self.num_output_frames
        self._num_prepared, self.matrices, self.prepared_faces = n_src, [list(matrices)], faces
        self.has_face = np.array([m is not None for m in matrices], dtype=bool)
        if not self.has_face.any():
            raise NoFaceError(f"{self.source.label} has no face to lip-sync")
        self.order = pingpong_indices(n_src, n_out)
        if min(n_out - n_src, n_src) > self.max_tail_frames:
            self._cache_all_frames()

    def _read_first_pass(self, tracker: FaceTracker, max_frames: int | None = None) -> None:
        """Feed every frame (or the first ``max_frames``) to ``tracker`` (its workers detect faces a few frames
        ahead); write the frames to the cache when it is on."""
        cache = None
        total = self.source.expected_frames if max_frames is None else min(max_frames, self.source.expected_frames)
        bar = self.progress(None, "Face analysis", total)
        tracker.timer = self.timer

        def decoded() -> Iterator[np.ndarray]:
            frames, count = iter(self.source), 0
            try:
                while max_frames is None or count < max_frames:
                    with self.timer("decode"):
                        frame = next(frames, None)
                    if frame is None:
                        return
                    count += 1
                    yield frame
            finally:
                close = getattr(frames, "close", None)
                if close is not None:  # stopped early: end the decoder now, not when it is collected
                    close()

        try:
            for frame in tracker.track(decoded()):
                bar.update()
                if self.cache_path is not None:
                    with _writing_frame_cache(self.cache_path):
                        if cache is None:
                            cache = open(self.cache_path, "wb")  # noqa: SIM115 - closed below
                        cache.write(frame.tobytes())
                self.frame_shape = frame.shape
        finally:
            bar.close()
            if cache is not None:
                with _writing_frame_cache(self.cache_path):
                    cache.close()
        if tracker.num_frames == 0:
            raise InvalidVideoError(f"video has no frames: {self.source.label}")

    def latent_cache(self, voice: int = 0) -> LatentCache:
        """A [`LatentCache`] that keeps the VAE latents of the face of ``voice`` in every source frame until its last
        use in the output."""
        matrices = self.matrices[voice]
        return LatentCache(Counter(int(j) for j in self.order if matrices[j] is not None))

    # ------------------------------------------------------------------ pass 2
    def frames_in_order(self) -> Iterator[np.ndarray]:
        """Source frames in output order: decoded as a stream, from a small in-memory tail when the output loops back
        by at most ``max_tail_frames``, or read one by one from the on-disk cache."""
        order, n_src, video = self.order, self.num_source_frames, self.source
        if self.cache_path is None:
            tail: deque[np.ndarray] = deque(maxlen=min(max(len(order) - n_src, 0), n_src))
            frames = iter(video)
            for pos, j in enumerate(order):
                if pos < n_src:
                    frame = next(frames, None)
                    if frame is None:
                        raise InvalidVideoError(f"{video.label} gave fewer frames on the second read than on the first")
                    if tail.maxlen:
                        tail.append(frame)
                else:  # looping back over the last frames
                    frame = tail[j - (n_src - len(tail))]
                yield frame
            return
        # plain reads rather than a memory map: mapped pages would count in (and grow) the resident set
        nbytes = int(np.prod(self.frame_shape))
        with open(self.cache_path, "rb") as fh:
            for j in order:
                frame = np.empty(self.frame_shape, np.uint8)
                fh.seek(int(j) * nbytes)
                if fh.readinto(frame.reshape(-1)) != nbytes:
                    raise InvalidVideoError(f"frame cache is truncated at frame {j} of {video.label}")
                yield frame

    def windows(self, num_frames: int) -> Iterator[FrameWindow]:
        """Second pass: the output in windows of ``num_frames`` frames with their aligned faces (prepared one window
        ahead in a background thread with ``overlap_stages``)."""
        windows = self._decode_windows(num_frames)
        self._windows = prefetch(windows) if self.overlap_stages else windows
        return self._windows

    def _decode_windows(self, num_frames: int) -> Iterator[FrameWindow]:
        frames_iter = self.frames_in_order()
        for start in range(0, self.num_output_frames, num_frames):
            idx = self.order[start : start + num_frames]
            with self.timer("decode"):
                frames = [next(frames_iter) for _ in idx]
            groups = []
            for voice, matrices in enumerate(self.matrices):
                slots = [k for k, j in enumerate(idx) if matrices[j] is not None]
                if not slots:
                    continue
                with self.timer("alignment"):
                    if self.prepared_faces is not None:  # a prepared avatar: the stored crops
                        faces = np.stack([self.prepared_faces(int(idx[k])) for k in slots])
                    else:
                        faces = self.aligner.align_batch([frames[k] for k in slots], [matrices[idx[k]] for k in slots])
                groups.append(FaceGroup(voice, slots, faces, np.array([start + k for k in slots]),
                                        [int(idx[k]) for k in slots]))
            yield FrameWindow(start, idx, frames, groups)

    # ------------------------------------------------------------------ output
    def open_output(self, output_path: str | os.PathLike | None, audio: Any, samples: np.ndarray, crf: int = 18,
                    keep_frames: bool = False, fps: float = VIDEO_FPS, timestamps: np.ndarray | None = None,
                    encoder: str | None = None, track: Track = "speech") -> None:
        """Prepare the sink: the video file at ``output_path`` (muxed with ``audio``, the caller's file, of which its
        audio track ``track`` as [`~latentsync.media.audio.load_audio`] takes it: by default the one with the speech
        ([`~latentsync.media.audio.speech_track`]); the mix of a [`~latentsync.media.audio.VoiceMix`]; or a WAV copy
        of ``samples`` when the audio was given in memory)
        and/or the frames kept in memory. The file is written at ``fps``, or with each output
        frame at its time in ``timestamps`` (seconds; on the source's clock), with libx264 or the GPU ``encoder``
        (see [`~latentsync.media.video.usable_encoder`])."""
        self.keep_frames = keep_frames
        if output_path is not None:
            if isinstance(audio, (str, os.PathLike)):
                audio_path = os.fspath(audio)
                index = track_index(audio, track)
                if index:  # the writers mux a file's first audio track: the chosen one, copied as it is
                    audio_path = copy_track(audio_path, index, self._temp_path("audio.mka"))
            elif isinstance(audio, VoiceMix):  # a voice per face: their mix, at the files' quality
                audio_path = audio.write(self._temp_path("mix.flac"), self._temp_path)
            else:  # samples in memory: muxed from a WAV copy
                audio_path = self._temp_path("audio.wav")
                write_wav(audio_path, samples)
            # shown as wide as the input, and with its colours: tagged unless players guess the input's matrix too
            shown = {"sample_aspect": self.source.sample_aspect, "tag_colors": self.source.colors_known}
            if timestamps is not None:
                self.writer = TimedVideoWriter(output_path, timestamps, self.source.time_base or DEFAULT_TIME_BASE,
                                               audio_path=audio_path, crf=crf, encoder=encoder, **shown)
            else:
                self.writer = VideoWriter(output_path, fps, audio_path=audio_path, crf=crf, encoder=encoder, **shown)
        self._sink = OrderedWorker(self._paste_and_write) if self.overlap_stages else None

    def buffer_windows(self, count: int) -> None:
        """Let up to ``count`` windows wait for paste-back and encoding without blocking [`write`] (several windows
        arrive at once when the model denoises them together)."""
        if self._sink is not None:
            self._sink.allow_pending(count)

    def write(self, window: FrameWindow, new_faces: Sequence[np.ndarray | None] | None) -> None:
        """Paste ``new_faces`` (for each of the window's groups, its regenerated aligned faces or None; or None for
        no change) into the window's frames and write them, in a background thread with ``overlap_stages``."""
        self.frames_submitted += len(window.frames)
        if self._sink is not None:
            self._sink.submit(window, new_faces)
        else:
            self._paste_and_write(window, new_faces)

    def _paste_and_write(self, window: FrameWindow, new_faces: Sequence[np.ndarray | None] | None) -> None:
        with self.timer("paste_back"):
            for group, faces in zip(window.groups, new_faces if new_faces is not None else []):
                if faces is None:
                    continue
                matrices = self.matrices[group.voice]
                pasted = self.aligner.paste_batch([window.frames[k] for k in group.slots], faces,
                                                  [matrices[window.source_indices[k]] for k in group.slots])
                for k, frame in zip(group.slots, pasted):
                    window.frames[k] = frame
        with self.timer("encode"):
            for frame in window.frames:
                if self.writer is not None:
                    self.writer.write(frame)
                if self.keep_frames:
                    self.kept.append(frame)

    def finish(self) -> list[np.ndarray]:
        """Wait for the last windows, complete the output file, and return the frames kept in memory."""
        self._stop_windows()
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self.writer is not None:
            with self.timer("encode"):
                self.writer.close()
            self.writer = None
        return self.kept

    def abort(self) -> None:
        """Stop the background threads and remove a partly written output (after an error)."""
        self._stop_windows()
        if self._sink is not None:
            self._sink.close_quietly()
            self._sink = None
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def _stop_windows(self) -> None:
        if self._windows is not None and hasattr(self._windows, "close"):
            self._windows.close()
        self._windows = None
