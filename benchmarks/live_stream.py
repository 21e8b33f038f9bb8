"""Live lip sync from a prepared avatar: latency to the first frame, frames per second and memory over a long stream,
and how far the live audio features are from the offline ones.

The speech is the example sentence repeated to ``--seconds`` and fed in 0.2 s chunks as fast as the stream takes
them (so frames/s is the compute rate: above the frame rate means the stream keeps up with real time). Printed:

- latency to the first frame: the audio one window needs (16 frames) plus the compute of that window, measured;
- frames/s over the stream, and the resident memory (RSS) after the first window, halfway and at the end (flat
  memory: the end is no higher than the middle);
- the live-vs-offline audio-feature difference: for every window, the contexts the stream used (audio received so
  far) against the offline call's (the whole audio), as a relative L2 difference per position in the window
  (position 15 is the newest frame, whose context reaches 0.12 s past the last sample received).

    python benchmarks/live_stream.py                      # tiny model (64 px faces), 5-minute stream, CPU
    python benchmarks/live_stream.py --seconds 20 --feature-difference-only

The tiny model has random weights: its speed and memory are the pipeline's overhead, and its feature differences
show the mechanism (how much of each context is cut), not what the real Whisper encoder would give.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from latentsync.audio_features import frame_audio_contexts
from latentsync.live import LiveAudioFeatures
from latentsync.media import load_audio
from latentsync.testing import build_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 3200  # 0.2 s


def speech(seconds: float) -> np.ndarray:
    sentence = load_audio(ROOT / "examples" / "speech.wav")
    return np.tile(sentence, int(np.ceil(seconds * 16000 / len(sentence))))[: int(seconds * 16000)]


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def stream_run(pipe, avatar: str, samples: np.ndarray, steps: int) -> None:
    chunks_given = [0]

    def chunks():
        for i in range(0, len(samples), CHUNK):
            chunks_given[0] += 1
            yield samples[i : i + CHUNK]

    start = time.perf_counter()
    first, count, memory, total = None, 0, {}, len(samples) * 25 // 16000
    for frame in pipe.stream(chunks(), avatar=avatar, num_inference_steps=steps, guidance_scale=1.0,
                             generator=torch.Generator().manual_seed(0)):
        count += 1
        if first is None:
            first = (time.perf_counter() - start, chunks_given[0] * CHUNK / 16000)
            memory["after the first window"] = rss_mb()
        if count == total // 2:
            memory["halfway"] = rss_mb()
    elapsed = time.perf_counter() - start
    memory["end"] = rss_mb()
    compute, audio_waited = first
    print(f"stream of {len(samples) / 16000:.0f} s: {count} frames in {elapsed:.1f} s = {count / elapsed:.1f} "
          f"frames/s ({count / elapsed / 25:.2f}x real time at 25 fps)")
    print(f"latency to the first frame: {audio_waited:.2f} s of audio (one window, whole chunks) + "
          f"{compute:.2f} s of compute = {audio_waited + compute:.2f} s when the speech arrives in real time")
    print("resident memory: " + ", ".join(f"{k} {v:.0f} MB" for k, v in memory.items())
          + f" (end / halfway = {memory['end'] / memory['halfway']:.3f})")


def feature_difference(pipe, samples: np.ndarray) -> None:
    """Per position in the window, the relative L2 difference between the live contexts and the offline ones."""
    offline = pipe.encode_audio(samples)
    live = LiveAudioFeatures(pipe.feature_extractor, pipe.audio_encoder)
    diffs, fed, window = [], 0, 0
    while (window + 1) * 16 <= len(samples) * 25 // 16000:
        end = (window + 1) * 16 * 640  # the audio up to the window's end, in whole chunks
        while fed < end:
            live.push(samples[fed : fed + CHUNK])
            fed += CHUNK
        frames = np.arange(window * 16, window * 16 + 16)
        got, want = live.contexts(frame_indices=frames), frame_audio_contexts(offline, frames)
        diffs.append(((got - want).flatten(1).norm(dim=1) / want.flatten(1).norm(dim=1)).numpy())
        window += 1
    diffs = np.stack(diffs)
    print(f"live vs offline audio contexts over {len(diffs)} windows (relative L2, mean per position in the window):")
    print("  positions 0-15: " + " ".join(f"{v:.3f}" for v in diffs.mean(0)))
    print(f"  all frames: mean {diffs.mean():.3f}, median {np.median(diffs):.3f}; the newest frame "
          f"{diffs[:, -1].mean():.3f}, the oldest {diffs[:, 0].mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the stream (default 5 minutes)")
    parser.add_argument("--resolution", type=int, default=64, help="face resolution of the tiny model")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--feature-difference-only", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = build_tiny_pipeline(resolution=args.resolution)
    pipe.set_progress_bar_config(disable=True)
    samples = speech(args.seconds)
    print(f"tiny model, {args.resolution} px faces, {args.steps} step(s), CPU, {torch.get_num_threads()} threads")
    feature_difference(pipe, samples[: 20 * 16000])
    if args.feature_difference_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        pipe.prepare_avatar(ROOT / "examples" / "face.mp4", tmp)
        stream_run(pipe, tmp, samples, args.steps)


if __name__ == "__main__":
    sys.exit(main())
