"""Shared fixtures: a tiny random pipeline saved and loaded through the real code, and short media files."""

from __future__ import annotations

import os
import subprocess
import wave
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
EXAMPLES = ROOT / "examples"
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-y", "-v", "error", *args], check=True)


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"shared test data not found: {path} (real clips live in ../shared/data)")
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25) -> Path:
    h, w = frames[0].shape[:2]
    gen = imageio_ffmpeg.write_frames(os.fspath(path), (w, h), fps=fps, codec="libx264", quality=None,
                                      output_params=["-crf", "12"], macro_block_size=1, ffmpeg_log_level="error")
    gen.send(None)
    for f in frames:
        gen.send(np.ascontiguousarray(f))
    gen.close()
    return path


def decode(path: Path, fps: float | None = 25) -> np.ndarray:
    from latentsync.media import iter_frames

    return np.stack(list(iter_frames(path, fps)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from latentsync.testing import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny-latentsync")
    build_tiny_pipeline(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from latentsync import LatentSyncPipeline

    pipe = LatentSyncPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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
def example_face() -> Path:
    return EXAMPLES / "face.mp4"


@pytest.fixture(scope="session")
def example_speech() -> Path:
    return EXAMPLES / "speech.wav"
