"""Tiny random stand-ins for every pretrained model of U-Net training, saved where the real loaders read them.

Used by the tests and the CPU demo: nothing is downloaded, yet each model goes through the same
``from_pretrained`` code as the real weights.
"""

from __future__ import annotations

import os

import torch


def build_tiny_syncnet(resolution: int = 64, num_frames: int = 16):
    """A StableSyncNet small enough for CPU tests; visual input ``(num_frames*3, resolution/2, resolution)``."""
    from ..models.syncnet import StableSyncNet

    if resolution != 64:
        raise ValueError("the tiny SyncNet is built for 64-pixel faces")
    return StableSyncNet(
        audio_block_out_channels=(8, 8, 16, 16, 16, 16),
        audio_downsample_factors=((2, 1), 2, 2, 2, 2, (3, 4)),
        audio_attn_blocks=(0, 0, 0, 0, 0, 0),
        visual_in_channels=num_frames * 3,
        visual_block_out_channels=(8, 8, 16, 16, 16, 16),
        visual_downsample_factors=((1, 2), 2, 2, 2, 2, 2),
        visual_attn_blocks=(0, 0, 0, 1, 0, 0),
        norm_num_groups=4,
        num_frames=num_frames,
        resolution=resolution,
    )


def build_tiny_videomae(classification: bool = False):
    """A tiny VideoMAE (16 frames of 32 x 32) for TREPA tests; ``classification`` adds the fc_norm head."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEModel

    config = VideoMAEConfig(image_size=32, patch_size=8, num_frames=16, tubelet_size=2, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            use_mean_pooling=True, num_labels=4)
    return VideoMAEForVideoClassification(config) if classification else VideoMAEModel(config)


def build_tiny_vgg():
    """A 5-tap VGG-style trunk with few channels (LPIPS backbone for tests)."""
    from .losses import VGG16Features

    return VGG16Features(channels=(4, 8, 8, 16, 16), convs_per_stage=(1, 1, 1, 1, 1))


def write_synthetic_clip(path: str, seed: int = 0, frames: int = 55, size: int = 64) -> str:
    """Write a stand-in "aligned face" clip: moving colour patterns at 25 fps with a modulated tone at 16 kHz."""
    import tempfile

    import numpy as np
    from scipy.io import wavfile

    from ..video_io import VideoWriter

    t = np.arange(int((frames / 25 + 0.2) * 16000)) / 16000
    wav = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) * (1 + np.sin(2 * np.pi * 3 * t))
    yy, xx = np.mgrid[0:size, 0:size]
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = os.path.join(tmp, "audio.wav")
        wavfile.write(wav_path, 16000, wav.astype(np.float32))
        with VideoWriter(path, 25, audio_path=wav_path) as writer:
            for i in range(frames):
                img = np.stack([(xx * 4 + i * 3 + seed * 40) % 256, (yy * 4) % 256, ((xx + yy) * 2 + i * 5) % 256], -1)
                writer.write(img.astype(np.uint8))
    return path


def save_tiny_training_models(directory: str, resolution: int = 64, seed: int = 0,
                              motion_modules: str = "all") -> dict[str, str]:
    """Save a tiny pipeline, SyncNet, VGG trunk and VideoMAE under ``directory``; return config overrides that
    point training at them (``components_from``, ``syncnet``, ``lpips_backbone``, ``lpips_heads``,
    ``trepa_model``)."""
    from ..tiny import build_tiny_pipeline

    torch.manual_seed(seed)
    paths = {k: os.path.join(directory, k) for k in ("pipeline", "syncnet", "vgg", "videomae")}
    build_tiny_pipeline(resolution=resolution, motion_modules=motion_modules, seed=seed).save_pretrained(
        paths["pipeline"])
    build_tiny_syncnet(resolution).save_pretrained(paths["syncnet"])
    build_tiny_vgg().save_pretrained(paths["vgg"])
    build_tiny_videomae().save_pretrained(paths["videomae"])
    return {
        "components_from": paths["pipeline"],
        "syncnet": paths["syncnet"],
        "lpips_backbone": paths["vgg"],
        "lpips_heads": "uniform",
        "trepa_model": paths["videomae"],
    }
