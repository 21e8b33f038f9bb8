"""Gradio app for LatentSync lip sync: upload (or record) speech and a talking-face video, get a lip-synced video.

Runs on a Hugging Face Space with a GPU (the `spaces` GPU decorator is used when the package is installed) and
locally on a CPU: ``python app.py``. Settings come from environment variables:

- ``LATENTSYNC_MODEL``: Hub id or local folder of a LatentSync pipeline, or ``tiny`` for the random-weight tiny
  model. Unset: the official ``ByteDance/LatentSync-1.6`` weights, falling back (with a notice in the page) to the
  tiny model when they cannot be loaded (offline, no cache).
- ``LATENTSYNC_DEVICE`` / ``LATENTSYNC_DTYPE`` (fp32, fp16, bf16): default best device, fp16 on GPU, fp32 on CPU.
- ``LATENTSYNC_MAX_SECONDS`` (default 30): longest accepted video and audio.
- ``LATENTSYNC_MAX_FILE_MB`` (default 200): largest accepted upload.
- ``LATENTSYNC_STEPS``: default number of denoising steps (20 on GPU, 4 on CPU).
- ``LATENTSYNC_OUTPUT_TTL`` (default 900): seconds a produced video is kept on disk for download.
- ``LATENTSYNC_GPU_DURATION`` (default 180): seconds of GPU a request may take on a ZeroGPU Space.

The app is importable without launching (``demo``, ``build_demo``); ``main()`` launches it.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # gradio otherwise contacts outside hosts at launch

import atexit
import logging
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch

try:
    import latentsync  # noqa: F401
except ImportError:  # a source checkout run without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from latentsync.errors import LatentSyncInputError
from latentsync.inputs import check_run_inputs
from latentsync.interrupts import stop_on_signals
from latentsync.pipeline import LatentSyncPipeline
from latentsync.tempfiles import make_work_dir, remove_work_dir
from latentsync.testing import build_tiny_pipeline
from latentsync.utils import DTYPES, default_device

if str(Path(__file__).resolve().parent) not in sys.path:  # app_live.py lives beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_live import build_live_tab  # noqa: E402

try:  # Hugging Face Spaces (ZeroGPU): request a GPU for the duration of each call
    import spaces
except ImportError:
    spaces = None

logger = logging.getLogger("latentsync.app")

OFFICIAL_MODEL = "ByteDance/LatentSync-1.6"
TINY_MODEL = "tiny"
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
TINY_NOTICE = (
    "This app runs the **tiny random-weight model**: the whole method runs, but the mouths it draws are noise. "
    "Set `LATENTSYNC_MODEL` to the official weights (`ByteDance/LatentSync-1.6`) for real lip sync."
)
TINY_PARAMETER_LIMIT = 10_000_000  # a U-Net smaller than this is a test model, not real weights


def _default_device() -> str:
    # a ZeroGPU Space has no GPU until a request holds one, but every request runs on one
    return "cuda" if os.environ.get("SPACES_ZERO_GPU") else default_device()


@dataclass
class AppConfig:
    """Settings of the app; [`AppConfig.from_env`] reads them from ``LATENTSYNC_*`` environment variables."""

    model: str | None = None  # None: official weights, tiny fallback
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    max_seconds: float = 30.0
    max_file_mb: float = 200.0
    default_steps: int = 20
    output_ttl: float = 900.0
    gpu_duration: int = 180
    # named after this process: a later start removes the folders of an app that was killed
    work_dir: Path = field(default_factory=lambda: Path(make_work_dir("app")))

    @classmethod
    def from_env(cls) -> "AppConfig":
        env = os.environ
        device = env.get("LATENTSYNC_DEVICE") or _default_device()
        dtype_name = env.get("LATENTSYNC_DTYPE") or ("fp32" if device == "cpu" else "fp16")
        if dtype_name not in DTYPES:
            raise ValueError(f"LATENTSYNC_DTYPE must be one of {', '.join(DTYPES)}, got {dtype_name!r}")
        return cls(
            model=env.get("LATENTSYNC_MODEL") or None,
            device=device,
            dtype=DTYPES[dtype_name],
            max_seconds=float(env.get("LATENTSYNC_MAX_SECONDS", 30)),
            max_file_mb=float(env.get("LATENTSYNC_MAX_FILE_MB", 200)),
            default_steps=int(env.get("LATENTSYNC_STEPS") or (4 if device == "cpu" else 20)),
            output_ttl=float(env.get("LATENTSYNC_OUTPUT_TTL", 900)),
            gpu_duration=int(env.get("LATENTSYNC_GPU_DURATION", 180)),
        )


def _short_reason(exc: BaseException, limit: int = 160) -> str:
    """First clause of an exception message, for a one-line notice."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    text = text.splitlines()[0].split(" (")[0].rstrip(".:")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_pipeline(config: AppConfig) -> tuple[LatentSyncPipeline, str, str | None]:
    """Load the pipeline named by ``config.model``.

    Returns ``(pipeline, model description, notice)``; the notice (markdown, or None) is shown in the page. With no
    model set, the official weights are tried first and the tiny model is used, with a notice, when they fail to
    load. An explicitly named model that fails to load raises.
    """
    def tiny() -> tuple[LatentSyncPipeline, str]:
        pipe = build_tiny_pipeline()
        return (pipe if config.dtype == torch.float32 else pipe.to(dtype=config.dtype)), "tiny random-weight model"

    name, notice = config.model, None
    if name == TINY_MODEL:
        pipe, name = tiny()
    elif name is not None:
        pipe = LatentSyncPipeline.from_pretrained(name, dtype=config.dtype)
    else:
        try:
            pipe, name = LatentSyncPipeline.from_pretrained(OFFICIAL_MODEL, dtype=config.dtype), OFFICIAL_MODEL
        except Exception as exc:  # noqa: BLE001 - offline, not cached, or any load failure: fall back to tiny
            reason = _short_reason(exc)
            logger.warning("cannot load %s (%s); using the tiny random-weight model", OFFICIAL_MODEL, reason)
            pipe, name = tiny()
            notice = f"⚠️ The official weights `{OFFICIAL_MODEL}` could not be loaded ({reason}). " + TINY_NOTICE
    if notice is None and sum(p.numel() for p in pipe.unet.parameters()) < TINY_PARAMETER_LIMIT:
        notice = "⚠️ " + TINY_NOTICE
    pipe = pipe.to(config.device)
    pipe.set_progress_bar_config(leave=False)
    return pipe, name, notice


class LipSyncService:
    """Validates uploads, runs the pipeline one request at a time, and cleans up the files it writes."""

    def __init__(self, pipe: LatentSyncPipeline, config: AppConfig):
        self.pipe, self.config = pipe, config
        self.work_dir = Path(config.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the pipeline (scheduler state) is not re-entrant
        generate = self._generate
        if spaces is not None:
            generate = spaces.GPU(duration=config.gpu_duration)(generate)
        self._generate_on_device = generate

    # ------------------------------------------------------------------ checks
    def _check_size(self, path: str, what: str) -> None:
        size_mb = os.path.getsize(path) / 2**20
        if size_mb > self.config.max_file_mb:
            raise gr.Error(f"The {what} file is {size_mb:.0f} MB; this app accepts up to "
                           f"{self.config.max_file_mb:g} MB.", print_exception=False)

    def _check_duration(self, seconds: float, what: str) -> None:
        if seconds > self.config.max_seconds:
            raise gr.Error(f"The {what} is {seconds:.1f} s long; this app accepts up to "
                           f"{self.config.max_seconds:g} s. Please trim it.", print_exception=False)

    def validate(self, video: str | None, audio: str | None) -> None:
        """Raise a readable [`gr.Error`] for a missing, oversized, too long, unreadable or silent input."""
        if not video:
            raise gr.Error("Please upload a talking-face video.", print_exception=False)
        if not audio:
            raise gr.Error("Please upload or record the speech audio.", print_exception=False)
        self._check_size(video, "video")
        self._check_size(audio, "audio")
        checked = check_run_inputs(video, audio)  # the pipeline's own checks: readable, right stream, not silent
        self._check_duration(checked.video.duration, "video")
        self._check_duration(checked.audio.duration, "audio")

    # ------------------------------------------------------------------ work
    def _generate(self, video: str, audio: str, output: str, steps: int, guidance: float, seed: int):
        """Run the pipeline; returns ``(pipeline output, None)`` or ``(None, readable error)``.

        Errors travel as values: on ZeroGPU this runs in another process, where exception types do not survive.
        """
        try:
            with self._lock:
                generator = torch.Generator("cpu").manual_seed(seed)
                out = self.pipe(video=video, audio=audio, output_path=output, num_inference_steps=steps,
                                guidance_scale=guidance, generator=generator)
            return out, None
        except LatentSyncInputError as exc:
            return None, str(exc)
        except torch.cuda.OutOfMemoryError:
            return None, "The GPU ran out of memory; try a shorter or smaller video."
        except Exception as exc:  # noqa: BLE001 - shown in the page as one line; the trace goes to the log
            logger.exception("lip sync failed")
            return None, f"Lip sync failed ({type(exc).__name__}: {_short_reason(exc, 300)})."

    def sweep(self) -> None:
        """Delete finished job folders older than ``output_ttl`` (gradio has already copied their videos)."""
        limit = time.time() - self.config.output_ttl
        for job in self.work_dir.iterdir():
            try:
                if job.stat().st_mtime < limit:
                    shutil.rmtree(job, ignore_errors=True)
            except FileNotFoundError:
                pass

    def __call__(self, video: str | None, audio: str | None, steps: float, guidance: float, seed: float,
                 progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[str, str]:  # noqa: B008
        """Gradio handler: returns the output video path and a status line, or raises a readable [`gr.Error`]."""
        self.sweep()
        names = {p: Path(p).name for p in (video, audio) if p}

        def readable(message: str) -> str:  # the user's file names, not server paths; a capital first letter
            for path, name in names.items():
                message = message.replace(path, name)
            return message[:1].upper() + message[1:]

        try:
            steps, seed, guidance = int(steps), int(seed), float(guidance)
        except (TypeError, ValueError):
            raise gr.Error("Steps, guidance scale and seed must be numbers.", print_exception=False) from None
        try:
            self.validate(video, audio)
        except gr.Error:
            raise
        except LatentSyncInputError as exc:
            raise gr.Error(readable(str(exc)), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - never a stack trace in the page
            logger.exception("input check failed")
            raise gr.Error(readable(f"Cannot read the inputs ({type(exc).__name__}: {exc})"),
                           print_exception=False) from None
        if not 1 <= steps <= 100:
            raise gr.Error("Steps must be between 1 and 100.", print_exception=False)
        if not 1.0 <= guidance <= 10.0:
            raise gr.Error("Guidance scale must be between 1 and 10.", print_exception=False)
        if not 0 <= seed < 2**63:
            raise gr.Error("Seed must be a non-negative integer.", print_exception=False)

        job = self.work_dir / uuid.uuid4().hex
        job.mkdir()
        output = str(job / "lipsync.mp4")
        names[output] = Path(output).name
        progress(0, desc="Starting")
        start = time.perf_counter()
        out, error = self._generate_on_device(video, audio, output, steps, guidance, seed)
        if error is not None:
            shutil.rmtree(job, ignore_errors=True)
            raise gr.Error(readable(error), print_exception=False)
        elapsed = time.perf_counter() - start
        seconds = out.num_frames / out.fps
        status = f"Done in {elapsed:.1f} s: {out.num_frames} frames ({seconds:.2f} s at {out.fps:g} fps)."
        if out.frames_without_face:
            status += f" {out.frames_without_face} frames had no face and were left unchanged."
            gr.Warning(f"{out.frames_without_face} of {out.num_frames} frames had no face and were left unchanged.")
        return output, status

    def close(self) -> None:
        remove_work_dir(self.work_dir)


def _examples() -> list[list[str]]:
    face, speech = EXAMPLES_DIR / "face.mp4", EXAMPLES_DIR / "speech.wav"
    return [[str(face), str(speech)]] if face.is_file() and speech.is_file() else []


def build_demo(config: AppConfig | None = None) -> gr.Blocks:
    """Load the model and build the Blocks app (queued: one generation at a time, the others wait in line)."""
    config = config or AppConfig.from_env()
    pipe, model_name, notice = load_pipeline(config)
    service = LipSyncService(pipe, config)
    atexit.register(service.close)

    with gr.Blocks(title="LatentSync lip sync", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# LatentSync lip sync\n"
            "Upload a talking-face video and a speech track (or record one). The mouth region is regenerated so the "
            f"lips follow the speech. Inputs up to {config.max_seconds:g} s and {config.max_file_mb:g} MB; the "
            "output follows the audio's length.\n\n"
            f"Model: `{model_name}` on `{config.device}`."
        )
        if notice:
            gr.Markdown(notice, elem_id="model-notice")
        with gr.Row():
            with gr.Column():
                video_in = gr.Video(label="Talking-face video", sources=["upload"], height=360,
                                    elem_id="video-input")
                audio_in = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                    elem_id="audio-input")
                with gr.Accordion("Advanced settings", open=False):
                    steps = gr.Slider(1, 50, value=config.default_steps, step=1, label="Denoising steps")
                    guidance = gr.Slider(1.0, 3.0, value=1.5, step=0.1, label="Guidance scale (1 disables)")
                    seed = gr.Number(value=1247, precision=0, minimum=0, label="Seed")
                run = gr.Button("Lip sync", variant="primary", elem_id="run-button")
            with gr.Column():
                video_out = gr.Video(label="Lip-synced video", interactive=False, buttons=["download"], height=360,
                                     elem_id="video-output")
                status = gr.Markdown(elem_id="status")
        examples = _examples()
        if examples:
            gr.Examples(examples=examples, inputs=[video_in, audio_in], cache_examples=False)
        run.click(service, inputs=[video_in, audio_in, steps, guidance, seed], outputs=[video_out, status],
                  api_name="lipsync", concurrency_limit=1)
        demo_live = build_live_tab(pipe, config.default_steps, config.max_seconds, service._lock)
        atexit.register(demo_live.close)
    demo.queue(default_concurrency_limit=1, max_size=None)  # no queue cap: every request waits its turn
    demo.service = service
    demo.live = demo_live
    demo.config = config
    return demo


demo = build_demo()


def main() -> None:
    """Launch the app (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` choose the address). Ctrl-C and SIGTERM (a
    Space restart, ``docker stop``) close the server and remove the results before the process exits."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with stop_on_signals() as stop:  # SIGTERM becomes a KeyboardInterrupt, on which gradio closes the server
            demo.launch(max_file_size=f"{demo.config.max_file_mb:g}mb", show_error=True)
    except KeyboardInterrupt:  # the signal came before gradio's own loop took over
        demo.close()
    finally:
        demo.service.pipe._interrupt = True  # a request still running stops after its current window
        demo.service.close()
    if stop.signum is not None:
        logger.info("stopped by signal %d: results removed", stop.signum)
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    main()
