"""Gradio app for LatentSync lip sync: a talking-face video (or a photo) and a speech track give a lip-synced video.

Runs on a Hugging Face Space with a GPU (ZeroGPU included: the `spaces` GPU decorator is used when the package is
installed, asking for GPU time sized to each request) and locally: ``python app.py``. Settings come from environment
variables:

- ``LATENTSYNC_MODEL``: Hub id or local folder of a LatentSync pipeline, or ``tiny`` for the random-weight tiny
  model (local tests and demos only). Unset: the official ``ByteDance/LatentSync-1.6`` weights; when they cannot be
  loaded the app shows an error page and logs why (it never serves the tiny model in their place).
- ``LATENTSYNC_DEVICE`` / ``LATENTSYNC_DTYPE`` (fp32, fp16, bf16): default best device; bf16 on GPUs that support
  it (ZeroGPU included), fp16 on other accelerators, fp32 on the CPU.
- ``LATENTSYNC_MAX_SECONDS`` (default 30): longest accepted video and audio.
- ``LATENTSYNC_MAX_FILE_MB`` (default 200): largest accepted upload.
- ``LATENTSYNC_GPU_LIMIT``: most GPU seconds one request may ask for (default 300 on ZeroGPU, its maximum; no limit
  elsewhere). Inputs whose expected time does not fit are refused before any GPU time is used.
- ``LATENTSYNC_QUEUE_SIZE`` (default 10): requests that may wait; more are told the queue is full.
- ``LATENTSYNC_CACHE_EXAMPLES``: ``eager`` (results made at start-up; the default), ``lazy`` (made on first use; the
  default on ZeroGPU, which has no GPU at start-up) or ``off``.
- ``LATENTSYNC_EXAMPLES_DIR``: folder of the examples' files (default: ``examples/``; the examples whose files are
  missing there are left out).
- ``LATENTSYNC_OUTPUT_TTL`` (default 900): seconds a produced video is kept on disk for download.

The app is importable without launching (``demo``, ``build_demo``); ``main()`` launches it.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # gradio otherwise contacts outside hosts at launch

import atexit
import logging
import math
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import torch

try:
    import latentsync  # noqa: F401
except ImportError:  # a source checkout run without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from latentsync.app_support import (
    AUTOMATIC_AUDIO_TRACK,
    PRESETS,
    StopFlag,
    TimeModel,
    audio_track_choices,
    audio_track_number,
    default_face,
    describe_faces,
    draw_faces,
    examples_cache_dir,
    face_arguments,
    face_choices,
    face_menu_value,
    gpu_seconds,
    on_zero_gpu,
    photo_error,
    preview_frame,
    read_frame,
    remove_expired,
    visitor_reason,
)
from latentsync.devices import DTYPE_NAMES, fastest_dtype, torch_dtype
from latentsync.errors import LatentSyncInputError
from latentsync.inputs import check_run_inputs
from latentsync.interrupts import stop_on_signals
from latentsync.media import open_frames, probe_video, scan_audio, speech_track
from latentsync.media.probe import probe_audio_tracks
from latentsync.pipeline import LatentSyncPipeline
from latentsync.schedulers import scheduler_by_name
from latentsync.tempfiles import make_work_dir, remove_work_dir
from latentsync.testing import build_tiny_pipeline
from latentsync.utils import default_device

if str(Path(__file__).resolve().parent) not in sys.path:  # app_live.py lives beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_live import build_live_tab, streaming_available  # noqa: E402

try:  # Hugging Face Spaces (ZeroGPU): request a GPU for the duration of each call
    import spaces
except ImportError:
    spaces = None

logger = logging.getLogger("latentsync.app")

OFFICIAL_MODEL = "ByteDance/LatentSync-1.6"
TINY_MODEL = "tiny"
EXAMPLES_DIR = Path(os.environ.get("LATENTSYNC_EXAMPLES_DIR") or Path(__file__).resolve().parent / "examples")
TINY_NOTICE = (
    "This app runs the **tiny random-weight model**: the whole method runs, but the mouths it draws are noise (the "
    "examples' results too). Set `LATENTSYNC_MODEL` to the official weights (`ByteDance/LatentSync-1.6`) for real "
    "lip sync."
)
TINY_PARAMETER_LIMIT = 10_000_000  # a U-Net smaller than this is a test model, not real weights
ZERO_GPU_MAX_SECONDS = 300  # the longest GPU time one ZeroGPU call may ask for
CACHE_MODES = ("eager", "lazy", "off")
QUEUE_HEADROOM = 5  # places beyond queue_size, so that the checks themselves still get in to say it is full
SESSION_TIMEOUT = 3600.0  # a session's pending request is forgotten after this long (a closed tab, a lost event)
HEADER_DURATION_MARGIN = 1.0  # seconds a header's duration may exceed the limit before it alone refuses a file
GUIDANCE_MAX = 3.0  # the guidance slider's (and the API's) upper bound
GUIDANCE_DEFAULT = 1.5  # the guidance slider's value, and the API's when a caller leaves it empty
# how long Ctrl-C or SIGTERM waits for a running lip sync to stop; closing the server may take 5 s more (Gradio waits
# for open connections), and a container is killed 10 s after SIGTERM
STOP_WAIT_SECONDS = 4.0
STOPPING_MESSAGE = "The app is shutting down, so this lip sync was stopped. Please try again in a minute."
LEFT_MESSAGE = "The page was closed, so this lip sync was stopped."
STOPPED_MESSAGE = "Stopped: you pressed Stop."
# why a visitor's request stops (its page-closed flag's reason): the page was closed, or Stop was pressed
CLOSED, PRESSED_STOP = "closed", "stop"


def _zero_gpu() -> bool:
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def _default_device() -> str:
    # a ZeroGPU Space has no GPU until a request holds one, but every request runs on one
    return "cuda" if _zero_gpu() else default_device()


def _default_dtype(device: str) -> torch.dtype:
    # ZeroGPU lends H200 slices (bf16), but torch sees no GPU at start-up to ask
    return torch.bfloat16 if _zero_gpu() else fastest_dtype(device)


@dataclass
class AppConfig:
    """Settings of the app; [`AppConfig.from_env`] reads them from ``LATENTSYNC_*`` environment variables."""

    model: str | None = None  # None: the official weights
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    max_seconds: float = 30.0
    max_file_mb: float = 200.0
    output_ttl: float = 900.0
    gpu_limit: int | None = None  # most GPU seconds a request may take (None: no limit)
    queue_size: int = 10
    cache_examples: str = "eager"
    # named after this process: a later start removes the folders of an app that was killed
    work_dir: Path = field(default_factory=lambda: Path(make_work_dir("app")))

    @classmethod
    def from_env(cls) -> "AppConfig":
        env = os.environ
        device = env.get("LATENTSYNC_DEVICE") or _default_device()
        dtype_name = env.get("LATENTSYNC_DTYPE")
        if dtype_name is not None and dtype_name not in DTYPE_NAMES:
            raise ValueError(f"LATENTSYNC_DTYPE must be one of {', '.join(DTYPE_NAMES)}, got {dtype_name!r}")
        cache = env.get("LATENTSYNC_CACHE_EXAMPLES") or ("lazy" if _zero_gpu() else "eager")
        if cache not in CACHE_MODES:
            raise ValueError(f"LATENTSYNC_CACHE_EXAMPLES must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
        limit = env.get("LATENTSYNC_GPU_LIMIT") or (str(ZERO_GPU_MAX_SECONDS) if _zero_gpu() else None)
        return cls(
            model=env.get("LATENTSYNC_MODEL") or None,
            device=device,
            dtype=torch_dtype(dtype_name) if dtype_name else _default_dtype(device),
            max_seconds=float(env.get("LATENTSYNC_MAX_SECONDS", 30)),
            max_file_mb=float(env.get("LATENTSYNC_MAX_FILE_MB", 200)),
            output_ttl=float(env.get("LATENTSYNC_OUTPUT_TTL", 900)),
            gpu_limit=int(limit) if limit else None,
            queue_size=int(env.get("LATENTSYNC_QUEUE_SIZE", 10)),
            cache_examples=cache,
        )

    @property
    def dtype_name(self) -> str:
        return next(name for name, attr in DTYPE_NAMES.items() if getattr(torch, attr) == self.dtype)


def _short_reason(exc: BaseException, limit: int = 160) -> str:
    """First clause of an exception message, for a one-line notice."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    text = text.splitlines()[0].split(" (")[0].rstrip(".:")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_pipeline(config: AppConfig) -> tuple[LatentSyncPipeline, str, str | None]:
    """Load the pipeline named by ``config.model`` (None: the official weights; ``"tiny"``: the random tiny model).

    Returns ``(pipeline, model description, notice)``; the notice (markdown, or None) is shown in the page. Any
    failure to load raises: the app then shows an error page rather than a different model.
    """
    name = config.model or OFFICIAL_MODEL
    if name == TINY_MODEL:
        pipe, name = build_tiny_pipeline(), "tiny random-weight model"
        pipe = pipe if config.dtype == torch.float32 else pipe.to(dtype=config.dtype)
    else:
        pipe = LatentSyncPipeline.from_pretrained(name, dtype=config.dtype)
        if name == OFFICIAL_MODEL and getattr(pipe, "syncnet", None) is None:
            try:  # the official SyncNet finds the speaking face better than lip motion against loudness
                pipe.load_syncnet(OFFICIAL_MODEL)
            except Exception as exc:  # noqa: BLE001 - optional: the lip-motion score is the fallback
                logger.warning("no SyncNet for the speaking face (%s); lip motion is used", _short_reason(exc))
    notice = None
    if sum(p.numel() for p in pipe.unet.parameters()) < TINY_PARAMETER_LIMIT:
        notice = "⚠️ " + TINY_NOTICE
    pipe = pipe.to(config.device)
    pipe.set_progress_bar_config(leave=False)
    return pipe, name, notice


def _error(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


class RunStopped(Exception):
    """Raised inside a running lip sync (at a denoising step) when the app shuts down, the page that asked for it was
    closed or its Stop button pressed; the argument is the status that says which."""


@dataclass
class LipSyncRequest:
    """One lip sync as the page or the API asked for it, after the checks."""

    source: str  # the video or photo
    audio: str
    preset: str
    steps: int  # 0: the preset's
    guidance: float
    seed: int
    face: str
    seconds: float  # the output's length (the audio's)
    audio_track: int | None = None  # the speech's track of the audio file, numbered from 1 (None: automatic)
    session: str | None = None  # the page's session that asked for it (None: unknown, e.g. the examples' caching)
    # raised when the app shuts down, and when the page that asked for it is closed: they stop the run at its next
    # denoising step in whatever process it runs (ZeroGPU's worker included), see StopFlag
    app_stop: StopFlag | None = None
    page_closed: StopFlag | None = None


class LipSyncService:
    """Checks requests, runs the pipeline one request at a time with the chosen preset and face, sizes GPU time,
    and cleans up the files it writes."""

    def __init__(self, pipe: LatentSyncPipeline, config: AppConfig):
        self.pipe, self.config = pipe, config
        self.work_dir = Path(config.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the pipeline (scheduler state) is not re-entrant
        self._schedulers = {"ddim": pipe.scheduler}
        for preset in PRESETS.values():
            if preset.scheduler not in self._schedulers:
                self._schedulers[preset.scheduler] = scheduler_by_name(preset.scheduler, pipe.scheduler.config)
        parameters = sum(p.numel() for p in pipe.unet.parameters())
        self.time_model = TimeModel.for_device(config.device, config.dtype_name, pipe.config.resolution, parameters)
        self.queue = None  # the app's queue, set by build_demo (for the queue-full message)
        self._sessions: dict[str, float] = {}  # session -> when its pending request was accepted
        # sessions whose visitor stopped their request (closed the page, pressed Stop) while it waited or ran: why
        self._left: dict[str, str] = {}
        self._page_flags: dict[str, StopFlag] = {}  # session -> the page-closed flag of its request being generated
        self._state = threading.Lock()  # guards the three above (page events and requests run in several threads)
        self._in_flight = 0  # requests being generated, here or in a GPU worker process
        self._running: LipSyncRequest | None = None  # the request this process is generating now
        self._stopping = threading.Event()  # set by stop(): no new run starts, a running one stops at its next step
        # the same for a run in another process (ZeroGPU's GPU worker), which cannot see the event; the event stays
        # too, because the file goes with the work folder when the app closes, and "stopping" must outlast that
        self._app_stop = StopFlag(str(self.work_dir / "stopping"))
        self._app_stop.clear()  # left by an earlier app that used the same work folder: it would stop every run
        generate = self._generate
        if spaces is not None:
            generate = spaces.GPU(duration=self.gpu_duration)(generate)
        self._generate_on_device = generate

    # ------------------------------------------------------------------ time
    def expected_seconds(self, seconds: float, preset: str, steps: int = 0, guidance: float = 1.5) -> float:
        """Expected run time for ``seconds`` of output with ``preset`` on this app's device."""
        return self.time_model.estimate(seconds, PRESETS[preset], steps or None, guidance)

    def gpu_duration(self, request: LipSyncRequest, output: str) -> int:
        """GPU seconds to ask ZeroGPU for (the function given to ``spaces.GPU``): the expected time of this request
        (its length, the model's face resolution, the preset) with a margin, at most the configured limit."""
        need = gpu_seconds(self.expected_seconds(request.seconds, request.preset, request.steps, request.guidance))
        return min(need, self.config.gpu_limit) if self.config.gpu_limit else need

    def _fits(self, seconds: float, preset: str, steps: int, guidance: float) -> bool:
        """Whether ``seconds`` of output with ``preset`` fits the GPU-time limit."""
        limit = self.config.gpu_limit
        return not limit or gpu_seconds(self.expected_seconds(seconds, preset, steps, guidance)) <= limit

    def gpu_advice(self, seconds: float, preset: str, steps: int = 0, guidance: float = 1.5) -> str:
        """What makes a request that does not fit the GPU-time limit fit: the best faster preset whose estimate fits,
        else the speech length that fits with ``preset``."""
        faster = [p for p in PRESETS if PRESETS[p].cost() < PRESETS[preset].cost()
                  and self._fits(seconds, p, steps, guidance)]
        if faster:
            best = max(faster, key=lambda p: PRESETS[p].cost())
            return f"Choose the {best!r} preset"
        fits = [s for s in (x / 2 for x in range(1, int(self.config.max_seconds * 2) + 1))
                if self._fits(s, preset, steps, guidance)]
        return f"Shorten the speech to about {fits[-1]:g} s" if fits else "This model cannot fit any input"

    def check_gpu_time(self, request: LipSyncRequest) -> None:
        """Refuse a request whose GPU time would exceed the limit, naming the limit and what would fit."""
        limit = self.config.gpu_limit
        if self._fits(request.seconds, request.preset, request.steps, request.guidance):
            return
        need = gpu_seconds(self.expected_seconds(request.seconds, request.preset, request.steps, request.guidance))
        hint = self.gpu_advice(request.seconds, request.preset, request.steps, request.guidance)
        raise _error(f"This request needs about {need} s of GPU time ({request.seconds:.1f} s of output with the "
                     f"{request.preset!r} preset); this Space allows {limit} s per request. {hint}.")

    # ------------------------------------------------------------------ checks
    def _check_size(self, path: str, what: str) -> None:
        size_mb = os.path.getsize(path) / 2**20
        if size_mb > self.config.max_file_mb:
            raise _error(f"The {what} file is {size_mb:.0f} MB; this app accepts up to {self.config.max_file_mb:g} MB.")

    def _check_duration(self, seconds: float, what: str) -> None:
        if seconds > self.config.max_seconds:
            raise _error(f"The {what} is {seconds:.1f} s long; this app accepts up to {self.config.max_seconds:g} s. "
                         "Please trim it.")

    def check_audio_length(self, audio: str) -> None:
        """Refuse a speech file clearly longer than the limit from its header's duration, before decoding it (a long
        file takes seconds to decode). Raises the page's one-line [`gr.Error`]; a header without a duration, or one
        near the limit (a header's duration may be an estimate), passes: the decoded length is checked later."""
        seconds = probe_audio_tracks(audio)[1]
        if seconds > self.config.max_seconds + HEADER_DURATION_MARGIN:
            self._check_duration(seconds, "audio")

    def check_source(self, video: str | None, photo: str | None, duration: bool = False) -> None:
        """The cheap checks of the uploaded video or photo (no decoding, no face detection): its size, that a photo
        is an image, and with ``duration`` the video's length (a probe). Raises the page's one-line [`gr.Error`]."""
        source = video or photo
        self._check_size(source, "video" if video else "photo")
        if not video:
            reason = photo_error(source)
            if reason:
                raise _error(reason)
        elif duration:
            try:
                seconds = probe_video(video).duration
            except Exception:  # noqa: BLE001 - unreadable: the full checks say why
                return
            self._check_duration(seconds, "video")

    def check(self, video: str | None, photo: str | None, audio: str | None, preset: str | None, face: Any,
              steps: Any, guidance: Any, seed: Any, audio_track: Any = AUTOMATIC_AUDIO_TRACK) -> LipSyncRequest:
        """Every check of a request before it may use the model: readable [`gr.Error`] messages naming the user's
        files, never a traceback."""
        names = {p: Path(p).name for p in (video, photo, audio) if p}

        def readable(message: str) -> str:  # the user's file names, not server paths; the page's words
            return visitor_reason(message, names)

        if video and photo:
            raise _error("Give a video or a photo, not both: clear one of them.")
        source = video or photo
        if not source:
            raise _error("Please upload a talking-face video or a photo.")
        if not audio:
            raise _error("Please upload or record the speech audio.")
        preset = preset or "quality"
        if preset not in PRESETS:
            raise _error(f"Unknown preset {preset!r}: choose one of {', '.join(PRESETS)}.")
        numbers = {"Steps": steps or 0, "Guidance scale": GUIDANCE_DEFAULT if guidance is None else guidance,
                   "Seed": seed}
        for name, value in numbers.items():
            try:
                numbers[name] = float(value)
            except (TypeError, ValueError):
                numbers[name] = math.nan
            if not math.isfinite(numbers[name]):
                raise _error(f"{name} must be a number, got {value!r}.")
        steps, guidance, seed = int(numbers["Steps"]), numbers["Guidance scale"], int(numbers["Seed"])
        if not 0 <= steps <= 100:
            raise _error("Steps must be between 1 and 100 (0: the preset's).")
        if not 1.0 <= guidance <= GUIDANCE_MAX:
            raise _error(f"Guidance scale must be between 1 and {GUIDANCE_MAX:g}.")
        if not 0 <= seed < 2**63:
            raise _error("Seed must be a non-negative integer.")
        try:
            face_arguments(face)
            track = audio_track_number(audio_track)
        except ValueError as exc:
            raise _error(readable(str(exc))) from None
        self.check_source(video, photo, duration=True)
        self._check_size(audio, "audio")
        self.check_audio_length(audio)
        try:
            # the pipeline's own checks: readable, right stream, not silent
            checked = check_run_inputs(source, audio, audio_track=track, **face_arguments(face))
        except LatentSyncInputError as exc:
            raise _error(readable(str(exc))) from None
        except Exception as exc:  # noqa: BLE001 - never a stack trace in the page
            logger.exception("input check failed")
            raise _error(readable(f"Cannot read the inputs ({type(exc).__name__}: {exc})")) from None
        if video:
            self._check_duration(checked.video.duration, "video")
        self._check_duration(checked.audio.duration, "audio")
        face = default_face(not video) if face is None or face == "" else str(face)  # a face number 0 is one
        request = LipSyncRequest(source, audio, preset, steps, guidance, seed, face, checked.audio.duration, track)
        self.check_gpu_time(request)
        return request

    def precheck(self, video, photo, audio, preset, face, steps, guidance, seed, audio_track=AUTOMATIC_AUDIO_TRACK,
                 speech_video=None, request: gr.Request = None) -> str:  # noqa: RUF013 - gradio fills it
        """The page's instant check (not queued): the inputs, the GPU time, a full queue, and one pending request
        per visitor. Only when it passes does the request join the queue. ``speech_video``: the page's video file
        with the speech, used when the speech slot is empty. Returns an empty status (the last run's is cleared):
        Gradio then shows the request's place in the queue, and its progress once it runs; a text of its own stayed
        under the progress for the whole run ("Waiting for a free place in the queue…" beside "Lip sync - 40%")."""
        self.check(video, photo, audio or speech_video, preset, face, steps, guidance, seed, audio_track)
        waiting = queue_length(self.queue)
        if waiting >= self.config.queue_size:
            raise _error(f"The queue is full ({waiting} requests waiting, the most this Space accepts). "
                         "Please try again in a few minutes.")
        session = getattr(request, "session_hash", None)
        if session:
            now = time.time()
            with self._state:
                started = self._sessions.get(session)
                if started is None or now - started >= SESSION_TIMEOUT:
                    self._sessions[session] = now
            if started is not None and now - started < SESSION_TIMEOUT:
                raise _error("You already have a lip sync waiting or running; it must finish before you start "
                             "another.")
        return ""

    def _release(self, request: gr.Request | None) -> None:
        session = getattr(request, "session_hash", None)
        if session:
            with self._state:
                self._sessions.pop(session, None)
                self._left.pop(session, None)

    def visitor_left(self, request: gr.Request | None = None) -> None:
        """The page's unload event (the tab was closed or reloaded): the visitor's running lip sync stops at its next
        denoising step, freeing the model (and the GPU) for the next visitor, and its files are removed. Gradio
        itself drops a request that is still waiting, but cannot stop one that runs. The run is told through its
        page-closed flag, a file, so that it stops also in ZeroGPU's GPU worker process."""
        if self._stop_visitor(request, CLOSED):
            logger.info("a visitor closed the page: their lip sync stops at its next step")

    def visitor_stopped(self, request: gr.Request | None = None) -> Any:
        """The Stop button: the visitor's lip sync stops at its next denoising step (a waiting one ends without
        starting when its turn comes) with the status [`STOPPED_MESSAGE`] and no video. Returns the status
        meanwhile; with nothing to stop (pressed as the run ended), the status is left as it is."""
        if self._stop_visitor(request, PRESSED_STOP) is None:
            return gr.skip()
        return "Stopping…"

    def _stop_visitor(self, request: gr.Request | None, reason: str) -> bool | None:
        """Stop the pending request of ``request``'s session for ``reason``: whether it was running (its flag raised),
        None when the session has none."""
        session = getattr(request, "session_hash", None)
        with self._state:
            if not session or session not in self._sessions:
                return None
            self._left[session] = reason
            flag = self._page_flags.get(session)
        return flag is not None and flag.set(reason)

    # ------------------------------------------------------------------ faces and estimates
    def faces(self, video: str | None, photo: str | None, face: str | None, app_default: str | None = None
              ) -> tuple[Any, gr.Dropdown, str, str | None]:
        """After an upload (or a cleared one): a frame with every face found boxed and numbered, the face menu, a line
        saying what was found, and the menu value the app chose itself (the page keeps it, see
        [`face_menu_value`]: the visitor's choice of a rule outlives a cleared or replaced upload, the app's default
        for one input does not stick to the next). With nothing uploaded the menu is the page's first one. Runs on
        the CPU (face detection), so it costs no GPU time."""
        source = video or photo
        still = bool(photo) and not video

        def menu(tracks: Any = None) -> tuple[gr.Dropdown, str, str | None]:
            choices = face_choices(tracks, still)
            value, chosen_by_app = face_menu_value(face, app_default, choices, still)
            return gr.Dropdown(choices=choices, value=value), value, chosen_by_app

        if not source:
            dropdown, _, chosen_by_app = menu()
            return None, dropdown, "", chosen_by_app
        try:  # over the limits: the same refusal as the Lip sync button, before any (slow) face detection
            self.check_source(video, photo, duration=True)
        except gr.Error as exc:
            dropdown, _, chosen_by_app = menu()
            return None, dropdown, exc.message, chosen_by_app
        try:
            tracks = self.pipe.detect_faces(source)
            index = preview_frame(tracks)
            frame = read_frame(open_frames(source), index)
        except Exception as exc:  # noqa: BLE001 - an unreadable upload: the run's checks will say why
            logger.info("face preview failed: %s", exc)
            dropdown, _, chosen_by_app = menu()
            return None, dropdown, "Cannot look for faces in this upload.", chosen_by_app
        dropdown, value, chosen_by_app = menu(tracks)
        highlight = int(value) if value.isdigit() else None
        image = draw_faces(frame, tracks, index, highlight) if frame is not None else None
        return image, dropdown, describe_faces(tracks, still), chosen_by_app

    def audio_tracks(self, audio: str | None, audio_track: str | None, speech_video: str | None = None
                     ) -> gr.Dropdown:
        """After a speech upload (or a cleared one): the speech-track menu, shown only for a file with several audio
        tracks (a recording with a silent microphone track, a film with a dubbed track), with the automatic choice
        first and naming the track it picks. The visitor's choice stays when the new file has that track.
        ``speech_video``: the page's video file with the speech, used when the speech slot is empty."""
        audio = audio or speech_video
        tracks, automatic = 0, 0
        if audio:
            try:
                choice = speech_track(audio)
                tracks, automatic = choice.tracks, choice.index
            except Exception as exc:  # noqa: BLE001 - an unreadable upload: the run's checks say why
                logger.info("audio track probe failed: %s", exc)
        choices = audio_track_choices(tracks, automatic)
        value = audio_track if audio_track in [v for _, v in choices] else AUTOMATIC_AUDIO_TRACK
        return gr.Dropdown(choices=choices, value=value, visible=tracks > 1)

    def estimate(self, video: str | None, photo: str | None, audio: str | None, preset: str | None,
                 steps: Any = 0, guidance: Any = 1.5, speech_video: str | None = None) -> str:
        """The expected time for the uploaded speech's length with ``preset``, as a line for the page
        (``speech_video``: the page's video file with the speech, used when the speech slot is empty)."""
        audio = audio or speech_video
        if not audio or preset not in PRESETS:
            return "The expected time appears once the speech is uploaded."
        try:  # a speech file, video or photo over the limits: the Lip sync button's refusal, at once
            self.check_audio_length(audio)
            if video or photo:
                self.check_source(video, photo, duration=True)
        except gr.Error as exc:
            return exc.message
        try:
            seconds = scan_audio(audio).duration
            steps, guidance = int(steps or 0), float(guidance)
            self._check_duration(seconds, "audio")
        except gr.Error as exc:
            return exc.message
        except Exception:  # noqa: BLE001 - the run's checks report unreadable inputs
            return ""
        expected = self.expected_seconds(seconds, preset, steps, guidance)
        where = "GPU" if self.config.device.startswith("cuda") else self.config.device.upper()
        text = f"Expected time: about {_duration(expected)} of {where} for {seconds:.1f} s of output ({preset})."
        if self.config.gpu_limit:
            need = gpu_seconds(expected)
            text += f" GPU time asked for: {need} s of the {self.config.gpu_limit} s this Space allows."
            if need > self.config.gpu_limit:
                advice = self.gpu_advice(seconds, preset, steps, guidance)
                text = text[:-1] + f" (too long: {advice[:1].lower()}{advice[1:]})."
        if self.time_model.runs == 0 and not self.config.device.startswith("cuda"):
            text += " (A first guess: it is corrected after each run.)"
        return text

    # ------------------------------------------------------------------ work
    def _generate(self, request: LipSyncRequest, output: str):
        """Run the pipeline; returns ``(pipeline output, None)`` or ``(None, readable error)``.

        Errors travel as values: on ZeroGPU this runs in another process, where exception types do not survive, and
        which sees the app's stop and a closed page only through the request's stop flags.
        """
        preset = PRESETS[request.preset]
        try:
            with self._lock:
                self._running = request
                try:
                    self._raise_if_stopped()  # stopped, or its page closed, while it waited: it does not start
                    self.pipe.scheduler = self._schedulers[preset.scheduler]
                    generator = torch.Generator("cpu").manual_seed(request.seed)
                    out = self.pipe(video=request.source, audio=request.audio, output_path=output,
                                    num_inference_steps=request.steps or preset.steps,
                                    deep_cache_interval=preset.deep_cache_interval, guidance_scale=request.guidance,
                                    generator=generator, callback_on_step_end=self._check_stopping,
                                    audio_track=request.audio_track, **face_arguments(request.face))
                finally:
                    self._running = None
            return out, None
        except RunStopped as exc:  # the pipeline has removed its files, as after any error
            return None, str(exc)
        except LatentSyncInputError as exc:
            return None, str(exc)
        except torch.cuda.OutOfMemoryError:
            return None, "The GPU ran out of memory; try a shorter or smaller video."
        except Exception as exc:  # noqa: BLE001 - shown in the page as one line; the trace goes to the log
            logger.exception("lip sync failed")
            return None, f"Lip sync failed ({type(exc).__name__}: {_short_reason(exc, 300)})."

    def _raise_if_stopped(self) -> None:
        """Raise [`RunStopped`] once [`stop`] was called or the request being generated was stopped by its visitor
        (see [`_stop_message`])."""
        message = self._stop_message(self._running)
        if message is not None:
            raise RunStopped(message)

    def _stop_message(self, request: LipSyncRequest | None) -> str | None:
        """The status of ``request`` once stopped (the app shutting down, Stop pressed, its page closed); None while
        it may run. Read from its stop flags, so that it is seen in any process (ZeroGPU's GPU worker included)."""
        if self._stopping.is_set() or (request is not None and request.app_stop and request.app_stop.is_set()):
            return STOPPING_MESSAGE
        reason = request.page_closed.reason() if request is not None and request.page_closed else None
        if reason is None:
            return None
        return STOPPED_MESSAGE if reason == PRESSED_STOP else LEFT_MESSAGE

    def _check_stopping(self, pipe: LatentSyncPipeline, step: int, timestep: Any, tensors: dict) -> dict:
        """The pipeline's step callback: stops the run (see [`_raise_if_stopped`])."""
        self._raise_if_stopped()
        return tensors

    @property
    def stopping(self) -> bool:
        """Whether [`stop`] was called."""
        return self._stopping.is_set()

    def stop(self, wait: float = STOP_WAIT_SECONDS) -> bool:
        """Stop generating (the app shuts down): no new lip sync starts, and a running one (a visitor's, or an
        example's result being cached) stops at its next denoising step. Returns whether none is running any more,
        after waiting up to ``wait`` seconds (a run in ZeroGPU's GPU worker included). Safe to call from a signal
        handler."""
        self._stopping.set()
        self._app_stop.set()
        deadline = time.monotonic() + wait
        while self._in_flight and time.monotonic() < deadline:  # a run in another process holds no lock here
            time.sleep(0.05)
        if self._in_flight or not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        self._lock.release()
        return True

    def sweep(self) -> None:
        """Delete finished job folders older than ``output_ttl`` (gradio has already copied their videos)."""
        remove_expired(self.work_dir, self.config.output_ttl)

    def run(self, request: LipSyncRequest, progress: Any = None) -> tuple[str | None, str]:
        """Generate one checked request; returns the output path (None when the visitor pressed Stop) and a status
        line."""
        job = self.work_dir / uuid.uuid4().hex
        job.mkdir()
        output = str(job / "lipsync.mp4")
        if progress is not None:
            progress(0, desc="Starting")
        expected = self.expected_seconds(request.seconds, request.preset, request.steps, request.guidance)
        request.app_stop, request.page_closed = self._app_stop, StopFlag(str(job / "page-closed"))
        with self._state:
            self._in_flight += 1
            if request.session is not None:
                self._page_flags[request.session] = request.page_closed
                if request.session in self._left:
                    request.page_closed.set(self._left[request.session])
        start = time.perf_counter()
        try:
            # stopped (or its page closed) while it waited: it ends here, without asking ZeroGPU for a GPU
            error = self._stop_message(request)
            out, error = (None, error) if error is not None else self._generate_on_device(request, output)
        finally:
            with self._state:
                self._in_flight -= 1
                if request.session is not None:
                    self._page_flags.pop(request.session, None)
            request.page_closed.clear()
        if error is not None:
            shutil.rmtree(job, ignore_errors=True)
            if error == STOPPED_MESSAGE:  # the visitor's own choice: the status says so, no error
                return None, error
            names = {request.source: Path(request.source).name, request.audio: Path(request.audio).name,
                     output: "lipsync.mp4"}
            raise _error(visitor_reason(error, names))
        elapsed = time.perf_counter() - start
        # the lip sync's own time, without the wait for the model (busy caching the examples, or with the live tab):
        # the estimate learns from it, and the status says how long each took
        took = min(elapsed, out.timings.get("total", elapsed))
        self.time_model.update(took, request.seconds, PRESETS[request.preset], request.steps or None,
                               request.guidance)
        seconds = out.num_frames / out.fps
        waited = f", after {elapsed - took:.0f} s waiting for the model" if elapsed - took >= 1.0 else ""
        status = (f"Done in {took:.1f} s (expected {_duration(expected)}){waited}: {out.num_frames} frames "
                  f"({seconds:.2f} s at {out.fps:g} fps), {request.preset} preset.")
        guessed = [shot for shot in out.faces or [] if shot.rule.startswith("largest (")]  # "speaking" fell back
        if guessed:
            why = ", ".join(sorted({shot.rule[len("largest ("):-1] for shot in guessed}))
            status += (f" Who speaks could not be told in {len(guessed)} of {len(out.faces)} shot(s) ({why}): the "
                       "largest face was lip-synced there.")
        if out.frames_without_face:
            status += f" {out.frames_without_face} frames had no face and were left unchanged."
            gr.Warning(f"{out.frames_without_face} of {out.num_frames} frames had no face and were left unchanged.")
        return output, status

    def __call__(self, video: str | None = None, photo: str | None = None, audio: str | None = None,
                 preset: str = "quality", face: str | None = None, steps: float = 0,
                 guidance: float = GUIDANCE_DEFAULT,
                 seed: float = 1247, audio_track: str | int | None = AUTOMATIC_AUDIO_TRACK,
                 speech_video: str | None = None,
                 request: gr.Request = None,  # noqa: RUF013 - gradio fills it
                 progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[str | None, str]:  # noqa: B008
        """Gradio handler of ``/lipsync``: returns the output video path (None when the page's Stop was pressed) and
        a status line, or raises a readable [`gr.Error`]. ``audio`` may be any file with sound (an API caller's
        video included); ``speech_video`` is the page's video file with the speech (not an API parameter), used when
        ``audio`` is empty."""
        try:
            self.sweep()
            checked = self.check(video, photo, audio or speech_video, preset, face, steps, guidance, seed, audio_track)
            checked.session = getattr(request, "session_hash", None)
            return self.run(checked, progress)
        finally:
            self._release(request)

    def example(self, video: str | None, photo: str | None, audio: str | None, preset: str,
                face: str | None) -> tuple[str, str]:
        """The examples' function (its results are cached): the handler with the default settings."""
        return self.run(self.check(video, photo, audio, preset, face, 0, 1.5, 1247))

    def close(self) -> None:
        remove_work_dir(self.work_dir)


def _duration(seconds: float) -> str:
    seconds = max(1, math.ceil(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


EXAMPLES = [  # label, video, photo, audio, preset, face
    ("Astronaut", "face.mp4", None, "speech.wav", "quality", "speaking"),
    ("Photographer", "camera.mp4", None, "camera_speech.wav", "quality", "speaking"),
    ("Two faces: face 1", "two_faces.mp4", None, "two_faces_speech.wav", "quality", "1"),
    ("Still photo", None, "portrait.png", "portrait_speech.wav", "quality", "largest"),
]


def examples() -> tuple[list[list[Any]], list[str]]:
    """The bundled examples whose files are present: ``[video, photo, audio, preset, face]`` rows and their labels
    (see ``examples/make_examples.py`` for where they come from and their licences)."""
    rows, labels = [], []
    for label, video, photo, audio, preset, face in EXAMPLES:
        paths = [EXAMPLES_DIR / name if name else None for name in (video, photo, audio)]
        if all(p is None or p.is_file() for p in paths):
            rows.append([str(p) if p else None for p in paths] + [preset, face])
            labels.append(label)
    return rows, labels


def photo_input(**kwargs: Any) -> gr.Image:
    """The photo slot: Gradio's image upload, passing the uploaded file's path on without opening it (``gr.Image``
    opens every upload with Pillow, even with ``type="filepath"``, and fails with a traceback on a file that is not an
    image); the app's checks then say in one line what is wrong with it. (A subclass would make Gradio write a
    ``.pyi`` file beside this one, so the instance's ``preprocess`` is replaced instead.)"""
    image = gr.Image(type="filepath", **kwargs)
    gradio_preprocess = image.preprocess

    def preprocess(payload: Any) -> str | None:
        """The uploaded file's path (a pasted data URL: Gradio's own handling)."""
        if payload is None or payload.path is None or str(payload.url or "").startswith("data:"):
            return gradio_preprocess(payload)
        return str(payload.path)

    image.preprocess = preprocess
    return image


def lenient_slider(*args: Any, **kwargs: Any) -> gr.Slider:
    """A slider that passes an API caller's empty (None) or non-numeric value on to the app's checks, which name the
    setting in one line (None: its default). Gradio's slider refused them itself with a traceback in the log and a
    message about "input component at index 5 (a `slider` component)". In range, numbers go through Gradio's own
    checks as before."""
    slider = gr.Slider(*args, **kwargs)
    gradio_preprocess = slider.preprocess

    def preprocess(payload: Any) -> Any:
        """Gradio's preprocessing for numbers; anything else as it came."""
        if isinstance(payload, (int, float)) and not isinstance(payload, bool):
            return gradio_preprocess(payload)
        return payload

    slider.preprocess = preprocess
    return slider


def gradio_internal(owner: Any, name: str, feature: str) -> Any:
    """``owner``'s attribute ``name``, a part of Gradio that is not its public API (the app wraps or reads it where
    Gradio offers no public way); None, with a log line saying what the app does without it, when this Gradio has no
    such attribute: the app still starts, without that ``feature``."""
    value = getattr(owner, name, None)
    if value is None:
        logger.warning("Gradio %s has no %s.%s: %s", gr.__version__, type(owner).__name__, name, feature)
    return value


def queue_length(queue: Any) -> int:
    """Requests waiting in Gradio's queue (0 when unknown: no queue, or one that cannot say)."""
    try:
        return len(queue) if queue is not None else 0
    except TypeError:
        return 0


def use_model_examples_cache(config: AppConfig, model_name: str) -> None:
    """Cache the examples' results in a folder named after the model and its settings (``GRADIO_EXAMPLES_CACHE``),
    unless it is set already: Gradio reuses a cache folder's results after a restart, whatever model made them."""
    if not os.environ.get("GRADIO_EXAMPLES_CACHE"):
        folder = examples_cache_dir(config.model or OFFICIAL_MODEL, {"model": model_name, "dtype": config.dtype_name,
                                                                     "device": config.device.split(":")[0]})
        os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder)


def private_example_caching(demo: gr.Blocks, fn: Any) -> None:
    """Register the event through which Gradio caches the examples' results (``fn``) as private.

    Gradio runs ``fn`` for caching through a temporary event named after it (``/example``) that it registers as
    public, at start-up (eager caching) or at an example's first click (lazy caching), and removes afterwards. An API
    client (``gradio_client``, the API page) that asked for the API meanwhile was shown an ``/example`` endpoint that
    no longer existed when it called it, and Gradio kept that answer for later clients too. Private, the event never
    shows in the API and cannot be called; the page's examples work as before.
    """
    config = gradio_internal(demo, "default_config", "the examples' caching may show as an /example API endpoint")
    register = gradio_internal(config, "set_event_trigger",
                               "the examples' caching may show as an /example API endpoint") if config else None
    if register is None:
        return

    def set_event_trigger(*args: Any, **kwargs: Any) -> Any:
        """Gradio's registration, with the caching event private."""
        if kwargs.get("fn") == fn:
            kwargs["api_visibility"] = "private"
        return register(*args, **kwargs)

    config.set_event_trigger = set_event_trigger


def quiet_stop_of_caching(app: gr.Blocks, examples: gr.Examples, service: LipSyncService) -> None:
    """End the start-up caching of the examples' results quietly when the app shuts down during it: Gradio would
    log the stopped run's error with a traceback, and keep the half-made cache, which a restart then uses as it is
    (the missing results made only at their first click). Instead: one log line, and that cache is removed."""
    run_startup_events = gradio_internal(app, "run_extra_startup_events", "a shutdown during the examples' caching "
                                         "logs a traceback and keeps the half-made cache")
    if run_startup_events is None:
        return

    async def run_extra_startup_events() -> None:
        """Gradio's start-up events (the eager caching), ended quietly by a shutdown."""
        try:
            await run_startup_events()
        except gr.Error:
            if not service.stopping:
                raise
            folder = getattr(examples, "cached_folder", None)
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            logger.info("stopped while caching the examples' results: the next start makes them again")

    app.run_extra_startup_events = run_extra_startup_events


def build_error_demo(model: str, reason: str) -> gr.Blocks:
    """The page shown when the model cannot be loaded: what failed and what to do; no lip-sync controls."""
    with gr.Blocks(title="LatentSync lip sync: model not loaded") as demo:
        gr.Markdown(
            "# LatentSync lip sync\n"
            f"## ⛔ The model `{model}` could not be loaded\n"
            f"{reason}\n\n"
            "This app does not fall back to another model. If you run this Space: check the logs, that the "
            "weights are on the Hub and that `preload_from_hub` in the README lists them. Running locally: "
            "`LATENTSYNC_MODEL=tiny python app.py` gives the tiny random-weight model (noise-quality output), "
            "`LATENTSYNC_MODEL=DIR` a local pipeline folder.",
            elem_id="load-error",
        )
    demo.service = None
    demo.live = None
    return demo


def clear_other_slot(new: str | None, other: str | None) -> Any:
    """One speech source at a time: the other speech slot's new value (None: cleared) after a file came into one slot,
    judged on the page as it was when the file came. With the other slot empty then, nothing is cleared: under load
    this answer can arrive after the visitor has already put a file into the other slot, and clearing it then threw
    that newer file away (seen in a browser run: a speech file uploaded, then a video's speech, which vanished)."""
    return None if new and other else gr.skip()


def build_demo(config: AppConfig | None = None) -> gr.Blocks:
    """Load the model and build the Blocks app (queued: one generation at a time, at most ``queue_size`` waiting).
    When the model cannot be loaded: the error page, and the reason in the log."""
    config = config or AppConfig.from_env()
    try:
        pipe, model_name, notice = load_pipeline(config)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes the error page (and the log's traceback)
        model = config.model or OFFICIAL_MODEL
        logger.error("cannot load the model %s: %s", model, exc, exc_info=True)
        demo = build_error_demo(model, f"{type(exc).__name__}: {_short_reason(exc, 400)}")
        demo.app_config = config
        return demo
    service = LipSyncService(pipe, config)
    atexit.register(service.close)
    preset_choices = [(p.label, p.name) for p in PRESETS.values()]

    with gr.Blocks(title="LatentSync lip sync", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# LatentSync lip sync\n"
            "Upload a talking-face video, or a photo, and a speech track (or record one). The mouth region is "
            "regenerated so the lips follow the speech; a photo becomes a talking video as long as the speech. "
            f"Inputs up to {config.max_seconds:g} s and {config.max_file_mb:g} MB.\n\n"
            f"Model: `{model_name}` on `{config.device}` ({config.dtype_name})."
        )
        if notice:
            gr.Markdown(notice, elem_id="model-notice")
        with gr.Row():
            with gr.Column():
                with gr.Tabs() as source_tabs:
                    with gr.Tab("Video", id="video"):
                        video_in = gr.Video(label="Talking-face video", sources=["upload"], height=320,
                                            elem_id="video-input")
                    with gr.Tab("Photo", id="photo"):
                        photo_in = photo_input(label="Photo of a face (makes a talking video)",
                                             sources=["upload"], height=320, elem_id="photo-input")
                audio_in = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                    elem_id="audio-input")
                # the speech slot takes audio files only (the browser refuses a video there): a video's speech here
                speech_video = gr.File(label="…or use the speech of a video file (.mp4, .mov, .mkv, .webm)",
                                       file_types=["video"], type="filepath", height=80, elem_id="speech-video")
                # the same file for /lipsync, where it is no API parameter (API callers pass any file as audio)
                speech_from_video = gr.State(None)
                # shown for a speech file with several audio tracks; custom values: an API call may name a track
                audio_track = gr.Dropdown(audio_track_choices(0), value=AUTOMATIC_AUDIO_TRACK,
                                          label="Speech track (this file has several audio tracks)",
                                          allow_custom_value=True, visible=False, elem_id="audio-track")
                preset = gr.Radio(preset_choices, value="quality", label="Speed", elem_id="preset")
                with gr.Accordion("Faces", open=True):
                    faces_preview = gr.Image(label="Faces found (numbered)", interactive=False, height=240,
                                             elem_id="faces-preview")
                    faces_note = gr.Markdown(label="Faces note", elem_id="faces-note")
                    # custom values: an example or an API call may name a face before the menu lists it
                    face = gr.Dropdown(face_choices(None), value=default_face(), label="Face to lip-sync",
                                       allow_custom_value=True, elem_id="face-choice")
                    # the menu value the app chose itself (None: the visitor's own choice), see faces()
                    face_default = gr.State(default_face())
                with gr.Accordion("Advanced settings", open=False):
                    steps = lenient_slider(0, 50, value=0, step=1, label="Denoising steps (0: the preset's)")
                    guidance = lenient_slider(1.0, GUIDANCE_MAX, value=GUIDANCE_DEFAULT, step=0.1,
                                              label="Guidance scale (1 disables)")
                    seed = gr.Number(value=1247, precision=0, minimum=0, label="Seed")
                estimate = gr.Markdown(service.estimate(None, None, None, "quality"), label="Expected time",
                                       elem_id="estimate")
                with gr.Row():
                    run = gr.Button("Lip sync", variant="primary", elem_id="run-button", scale=3)
                    # shown while the visitor's lip sync waits or runs
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-button", visible=False, scale=1)
            with gr.Column():
                video_out = gr.Video(label="Lip-synced video", interactive=False, buttons=["download"], height=360,
                                     elem_id="video-output")
                status = gr.Markdown(label="Status", elem_id="status")  # the label names it in the API
        rows, labels = examples()
        if rows and config.cache_examples != "off":
            use_model_examples_cache(config, model_name)
            cached = gr.Examples(examples=rows, inputs=[video_in, photo_in, audio_in, preset, face],
                                 outputs=[video_out, status], fn=service.example, cache_examples=True,
                                 cache_mode=config.cache_examples, example_labels=labels,
                                 label="Examples (click one: its result is ready)"
                                 if config.cache_examples == "eager" else
                                 "Examples (the first click makes the result, later clicks show it at once)")
            private_example_caching(demo, service.example)
            quiet_stop_of_caching(demo, cached, service)
        elif rows:
            gr.Examples(examples=rows, inputs=[video_in, photo_in, audio_in, preset, face], example_labels=labels)

        inputs = [video_in, photo_in, audio_in, preset, face, steps, guidance, seed, audio_track]
        page_inputs = [*inputs, speech_video]  # the page's events see the video file with the speech itself
        # an example (or an upload) with a photo shows the photo tab, one with a video the video tab
        video_in.change(lambda v: gr.Tabs(selected="video") if v else gr.Tabs(), inputs=video_in, outputs=source_tabs,
                        queue=False, api_visibility="private")
        photo_in.change(lambda p: gr.Tabs(selected="photo") if p else gr.Tabs(), inputs=photo_in, outputs=source_tabs,
                        queue=False, api_visibility="private")
        for upload in (video_in, photo_in):
            upload.change(service.faces, inputs=[video_in, photo_in, face, face_default],
                          outputs=[faces_preview, face, faces_note, face_default], queue=False,
                          api_visibility="undocumented")
        # one speech source at a time: a video's speech replaces the speech slot's file, and a speech file (or an
        # example, or a recording) replaces the video's
        speech_video.upload(clear_other_slot, inputs=[speech_video, audio_in], outputs=audio_in, queue=False,
                            api_visibility="private")
        audio_in.change(clear_other_slot, inputs=[audio_in, speech_video], outputs=speech_video, queue=False,
                        api_visibility="private")
        speech_video.change(lambda f: f, inputs=speech_video, outputs=speech_from_video, queue=False,
                            api_visibility="private")
        # the track menu and the expected time each answer every change through one event, whose next call the page
        # holds back until the answer in flight has come ("always_last"): as separate events, the answer for a file
        # could arrive after the next file's (under load, or when one slot clears the other) and show its menu
        gr.on([audio_in.change, speech_video.change], service.audio_tracks,
              inputs=[audio_in, audio_track, speech_video], outputs=audio_track, queue=False,
              trigger_mode="always_last", api_visibility="undocumented")
        estimate_inputs = [video_in, photo_in, audio_in, preset, steps, guidance, speech_video]
        gr.on([c.change for c in (video_in, photo_in, audio_in, speech_video, preset, steps, guidance)],
              service.estimate, inputs=estimate_inputs, outputs=estimate, queue=False, trigger_mode="always_last",
              api_visibility="private")
        # the checks run first, at once (their own concurrency group, never behind a generation; queued so that
        # the page shows their refusals), and only a request that passes them joins the line for the model
        checked = run.click(service.precheck, inputs=page_inputs, outputs=status, concurrency_limit=None,
                            concurrency_id="checks", api_visibility="private")
        checked.success(lambda: gr.Button(visible=True), outputs=stop, queue=False, api_visibility="private")
        lipsync = checked.success(service, inputs=[*inputs, speech_from_video], outputs=[video_out, status],
                                  api_name="lipsync", concurrency_limit=1)
        lipsync.then(lambda: gr.Button(visible=False), outputs=stop, queue=False, api_visibility="private")
        # each run corrects the estimate: the line shows the corrected one (it kept the one from before the run)
        lipsync.then(service.estimate, inputs=estimate_inputs, outputs=estimate, queue=False, api_visibility="private")
        stop.click(service.visitor_stopped, outputs=status, queue=False, api_visibility="private")
        demo.unload(service.visitor_left)
        # the live tab runs DDIM with the fast preset's number of steps: each window must keep up with speech
        # the live tab only where Gradio can stream video (system ffmpeg); without it the tab could only say so
        demo_live = None
        if on_zero_gpu():
            # its windows would run outside the GPU function (on the CPU, far from real time), and the model's lock
            # it shares could be held when ZeroGPU forks its worker
            logger.info("ZeroGPU Space: no live tab (live lip sync needs a GPU held for the whole recording)")
        elif streaming_available():
            demo_live = build_live_tab(pipe, PRESETS["fast"].steps, config.max_seconds, service._lock,
                                       config.output_ttl)
            atexit.register(demo_live.close)
    # gradio's own cap, a backstop for API clients: the page's checks refuse at queue_size with a clearer message
    demo.queue(default_concurrency_limit=1, max_size=config.queue_size + QUEUE_HEADROOM)
    service.queue = gradio_internal(demo, "_queue", "a full queue is refused with Gradio's own message")
    demo.service = service
    demo.live = demo_live
    demo.app_config = config  # not demo.config: Gradio keeps its own configuration there
    return demo


demo = build_demo()


def shut_down(app: gr.Blocks, wait: float = STOP_WAIT_SECONDS) -> bool:
    """Stop ``app``: a running lip sync (a visitor's, or an example's result being cached at start-up) stops at its
    next denoising step, the server closes, the results and the live tab's files are removed. Returns whether no
    lip sync was still running after ``wait`` seconds."""
    stopped = app.service.stop(wait) if app.service is not None else True
    app.close(verbose=False)
    if app.service is not None:
        app.service.close()
    if app.live is not None:
        app.live.close()
    return stopped


def main() -> None:
    """Launch the app (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` choose the address). Ctrl-C and SIGTERM (a
    Space restart, ``docker stop``) stop a running lip sync, close the server and remove the results before the
    process exits with 130 or 143."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM becomes a KeyboardInterrupt, on which gradio closes the server; a second signal during the shutdown is
    # ignored. The running lip sync is told at once: the main thread may be waiting for it (the eager caching of the
    # examples runs in a worker thread that gradio's start-up waits for before the exception can surface)
    with stop_on_signals(on_stop=lambda signum: demo.service and demo.service.stop(wait=0)) as stop:
        try:
            demo.launch(max_file_size=f"{demo.app_config.max_file_mb:g}mb", show_error=True)
        except KeyboardInterrupt:  # the signal came before gradio's own loop took over (while it cached the examples)
            pass
        finally:
            stopped = shut_down(demo)
    if stop.signum is None:
        return
    if not stopped:
        logger.warning("a lip sync still running after %g s was abandoned; the next start removes its temporary "
                       "files", STOP_WAIT_SECONDS)
    logger.info("stopped by signal %d: results removed", stop.signum)
    # The process ends here, without the interpreter's teardown (as the command line does after a signal): that
    # teardown takes seconds, and a thread still inside torch or the video decoder then (an abandoned run) aborted the
    # process ("terminate called without an active exception") instead of exiting with 128 + the signal.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + stop.signum)


if __name__ == "__main__":
    main()
