"""Shared test helpers and fixtures: ffmpeg, media writers, synthetic clips, and the tiny models (built once per
session and shared by every module that needs them)."""

from __future__ import annotations

import os
import subprocess
import wave
from pathlib import Path

# Under pytest-xdist (the README's test command runs one worker per core) each worker gets an equal share of the
# cores for torch and OpenMP, set before torch starts its thread pool; the processes that tests launch inherit it.
# Tiny models gain little from threads, so workers in parallel finish the suite far sooner than one process. Idle
# OpenMP threads sleep instead of spinning: a test that needs more threads (the golden record) then does not fight
# the other worker for the cores (on 2 cores the golden test took 51 s instead of 83 s beside another test).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import imageio_ffmpeg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
EXAMPLES = ROOT / "examples"
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


# ---------------------------------------------------------------------------------------------------- helpers
def ffmpeg(*args: str) -> None:
    """Run the bundled ffmpeg quietly (overwriting outputs); raise when it fails."""
    subprocess.run([FFMPEG, "-y", "-nostdin", "-v", "error", *args], check=True)


def read_until(stream, condition, timeout: float = 300) -> str:
    """What a process writes to ``stream`` (its stdout or stderr pipe) until ``condition(text)`` holds, the
    process closes it, or ``timeout`` seconds pass."""
    import time

    text, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = stream.read1(4096)
        if not chunk:
            break
        text += chunk
        if condition(text.decode(errors="replace")):
            break
    return text.decode(errors="replace")


def shared_file(name: str) -> Path:
    """A file of the real test data in ../shared/data (the test is skipped when it is missing)."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"shared test data not found: {path} (real clips live in ../shared/data)")
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """Mono 16-bit WAV of float samples in [-1, 1] (truncated to integers, as the test clips were made)."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def write_video(path: Path, frames, fps: float = 25, audio: np.ndarray | None = None, crf: int = 12) -> Path:
    """H.264 video of RGB uint8 frames, with 16 kHz ``audio`` (AAC) when given."""
    from latentsync.media import VideoWriter

    path = Path(path)
    wav = write_wav(path.with_name(path.name + ".wav"), audio) if audio is not None else None
    try:
        with VideoWriter(path, fps, audio_path=os.fspath(wav) if wav else None, crf=crf) as writer:
            for frame in frames:
                writer.write(frame)
    finally:
        if wav is not None:
            wav.unlink()
    return path


def decode(path: Path, fps: float | None = 25) -> np.ndarray:
    """Every frame of a video, resampled to ``fps`` (None: as stored)."""
    from latentsync.media import iter_frames

    return np.stack(list(iter_frames(path, fps)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def make_sync_clip(path: Path, seconds: float, seed: int, size: int = 64) -> Path:
    """Synthetic aligned clip: a dark 'mouth' bar whose height follows the loudness of a modulated tone + noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 25)
    envelope = np.clip(np.sin(np.linspace(0, rng.uniform(6, 12), n)) + rng.normal(0, 0.2, n), 0, 1)
    t = np.arange(int(seconds * 16000)) / 16000
    carrier = 0.4 * np.sin(2 * np.pi * 1000 * t) + 0.1 * rng.standard_normal(len(t))  # survives pre-emphasis
    tone = carrier * np.repeat(envelope, 640)[: len(t)]
    frames = []
    for e in envelope:
        frame = np.full((size, size, 3), 180, np.uint8)
        h = 2 + int(e * size * 0.2)
        frame[int(size * 0.75) - h : int(size * 0.75) + h, size // 4 : 3 * size // 4] = 40
        frames.append(frame)
    return write_video(path, frames, audio=tone, crf=10)


def make_sync_clips(folder: Path) -> Path:
    """Two synthetic aligned clips (2.4 s and 3 s, 64 x 64) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    make_sync_clip(folder / "a.mp4", 2.4, 0)
    make_sync_clip(folder / "b.mp4", 3.0, 1)
    return folder


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test chooses its own accelerate settings (accelerate fixes mixed precision once per process)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random pipeline (seed 0), saved once and loaded through the real code."""
    from latentsync.testing import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny-latentsync")
    build_tiny_pipeline(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir_64(tmp_path_factory) -> Path:
    """The tiny random pipeline with 64-pixel faces (seed 0), saved once: quick enough for many runs."""
    from latentsync.testing import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny-latentsync-64")
    build_tiny_pipeline(resolution=64, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from latentsync import LatentSyncPipeline

    pipe = LatentSyncPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipe_64(tiny_model_dir_64):
    """The tiny random pipeline for 64-pixel faces (seed 0, saved and loaded back): the cheapest whole pipeline, for
    tests that run many windows."""
    from latentsync import LatentSyncPipeline

    pipe = LatentSyncPipeline.from_pretrained(tiny_model_dir_64)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_syncnet_dir(tmp_path_factory) -> Path:
    """The tiny StableSyncNet for 32-pixel faces (seed 0), saved once."""
    from latentsync.testing import build_tiny_syncnet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("syncnet") / "tiny"
    build_tiny_syncnet(32).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sync_clips_dir(tmp_path_factory) -> Path:
    """Two synthetic aligned clips with audio (see [`make_sync_clip`]), shared by the SyncNet tests."""
    return make_sync_clips(tmp_path_factory.mktemp("sync_clips"))


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Tiny stand-ins of every model U-Net training loads, saved once where the real loaders read them, and three
    synthetic aligned 64 px clips: ``(folder, config overrides pointing at them and at the clips)``. Tests write
    their runs under the folder, each in its own sub-folder."""
    from latentsync.testing import save_tiny_training_models, write_synthetic_clip

    root = tmp_path_factory.mktemp("tiny_training")
    clips = root / "clips"
    clips.mkdir()
    for c in range(3):
        write_synthetic_clip(str(clips / f"clip{c}.mp4"), seed=c)
    overrides = save_tiny_training_models(str(root / "models"))
    overrides["train_data"] = str(clips)
    return root, overrides


@pytest.fixture(scope="session")
def real_clip(tmp_path_factory) -> Path:
    """2 s of the real demo1 clip, downscaled to 540 x 960, H.264 + AAC."""
    src = shared_file("demo1_video.mp4")
    out = tmp_path_factory.mktemp("media") / "real_clip.mp4"
    ffmpeg("-i", os.fspath(src), "-t", "2", "-vf", "scale=540:960", "-c:v", "libx264", "-crf", "14", "-c:a", "aac",
           os.fspath(out))
    return out


@pytest.fixture(scope="session")
def real_speech(tmp_path_factory) -> Path:
    """1.5 s of the real demo1 speech track."""
    src = shared_file("demo1_audio.wav")
    out = tmp_path_factory.mktemp("media") / "speech.wav"
    ffmpeg("-i", os.fspath(src), "-t", "1.5", os.fspath(out))
    return out


@pytest.fixture(scope="session")
def two_track_video(tmp_path_factory) -> Path:
    """2 s of the real demo1 clip at 144 x 256 with two audio tracks, as screen recorders (OBS) write them: track 1
    silent (an unused microphone), track 2 demo1's speech, in sync with the picture."""
    src = shared_file("demo1_video.mp4")
    out = tmp_path_factory.mktemp("media") / "two_tracks.mp4"
    ffmpeg("-i", os.fspath(src), "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", "-t", "2", "-map", "0:v",
           "-map", "1:a", "-map", "0:a", "-vf", "scale=144:256", "-c:v", "libx264", "-crf", "18", "-c:a", "aac",
           os.fspath(out))
    return out


@pytest.fixture(scope="session")
def example_face() -> Path:
    return EXAMPLES / "face.mp4"


@pytest.fixture(scope="session")
def example_speech() -> Path:
    return EXAMPLES / "speech.wav"


@pytest.fixture(scope="session")
def one_window(example_speech, tmp_path_factory) -> Path:
    """The first 0.64 s of the example speech: 16 output frames, one window."""
    out = tmp_path_factory.mktemp("speech") / "one_window.wav"
    ffmpeg("-i", os.fspath(example_speech), "-t", "0.64", os.fspath(out))
    return out


@pytest.fixture
def terminal_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, as in a terminal: a process that a shell starts
    in the background ignores SIGINT, and Python keeps that, so a test that sends itself a Ctrl-C would see nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
