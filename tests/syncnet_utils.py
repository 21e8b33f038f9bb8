"""Shared pieces of the SyncNet tests: a tiny model config and synthetic aligned clips with audio."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from conftest import write_wav

from latentsync.media import VideoWriter

# 32 x 32 faces -> 16 x 32 mouths; 64-d embeddings (GroupNorm 4 groups of 16 channels at the end)
TINY_MODEL = dict(
    audio_block_out_channels=[8, 8, 16, 16, 32, 64],
    audio_downsample_factors=[2, 2, 2, 2, 2, [2, 1]],
    audio_attn_blocks=[0, 0, 0, 0, 0, 0],
    visual_in_channels=48,
    visual_block_out_channels=[8, 16, 16, 32, 64],
    visual_downsample_factors=[2, 2, 2, 2, [1, 2]],
    visual_attn_blocks=[0, 0, 0, 0, 0],
    norm_num_groups=4,
    num_frames=16,
    resolution=32,
)


def make_clip(path: Path, seconds: float, seed: int, size: int = 64) -> Path:
    """Synthetic aligned clip: a dark 'mouth' bar whose height follows the loudness of a modulated tone + noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 25)
    envelope = np.clip(np.sin(np.linspace(0, rng.uniform(6, 12), n)) + rng.normal(0, 0.2, n), 0, 1)
    t = np.arange(int(seconds * 16000)) / 16000
    carrier = 0.4 * np.sin(2 * np.pi * 1000 * t) + 0.1 * rng.standard_normal(len(t))  # survives pre-emphasis
    tone = carrier * np.repeat(envelope, 640)[: len(t)]
    wav = write_wav(path.with_suffix(".wav"), tone)
    with VideoWriter(path, 25, audio_path=os.fspath(wav), crf=10) as writer:
        for e in envelope:
            frame = np.full((size, size, 3), 180, np.uint8)
            h = 2 + int(e * size * 0.2)
            frame[int(size * 0.75) - h : int(size * 0.75) + h, size // 4 : 3 * size // 4] = 40
            writer.write(frame)
    wav.unlink()
    return path


def make_clips_dir(tmp_path_factory) -> Path:
    """Two synthetic clips (2.4 s and 3 s, 64 x 64) in a fresh folder."""
    d = tmp_path_factory.mktemp("sync_clips")
    make_clip(d / "a.mp4", 2.4, 0)
    make_clip(d / "b.mp4", 3.0, 1)
    return d
