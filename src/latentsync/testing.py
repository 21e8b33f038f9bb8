"""Tiny random-weight models, one of each kind, and synthetic clips: the whole method runs in seconds on a CPU.

They produce noise-quality output. They exist so that the command line, the app, the tests and the CPU demos run on
a machine without the official weights, through the same ``save_pretrained`` / ``from_pretrained`` code as the real
ones. Real lip sync needs the official checkpoints.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

import imageio_ffmpeg

import numpy as np
import torch
from diffusers import AutoencoderKL
from transformers import (
    VideoMAEConfig,
    VideoMAEForVideoClassification,
    VideoMAEModel,
    WhisperConfig,
    WhisperFeatureExtractor,
)

from .media.constants import SAMPLE_RATE, VIDEO_FPS
from .media.files import ffmpeg_path
from .media.video import VideoWriter
from .models.audio_encoder import WhisperAudioEncoder
from .models.syncnet import StableSyncNet
from .models.unet import LatentSyncUNet
from .models.vgg import VGG16Features
from .pipeline import LatentSyncPipeline
from .schedulers import official_scheduler

# The tiny StableSyncNet per face resolution. 32 px faces (16 x 32 mouths) give 64-d embeddings; 64 px faces
# (32 x 64 mouths) give 16-d embeddings and one visual attention block. The final GroupNorm works on a 1 x 1 map, so
# it needs several channels per group (4 groups here).
TINY_SYNCNET_CONFIGS: dict[int, dict[str, Any]] = {
    32: dict(
        audio_block_out_channels=[8, 8, 16, 16, 32, 64],
        audio_downsample_factors=[2, 2, 2, 2, 2, [2, 1]],
        audio_attn_blocks=[0, 0, 0, 0, 0, 0],
        visual_block_out_channels=[8, 16, 16, 32, 64],
        visual_downsample_factors=[2, 2, 2, 2, [1, 2]],
        visual_attn_blocks=[0, 0, 0, 0, 0],
    ),
    64: dict(
        audio_block_out_channels=[8, 8, 16, 16, 16, 16],
        audio_downsample_factors=[[2, 1], 2, 2, 2, 2, [3, 4]],
        audio_attn_blocks=[0, 0, 0, 0, 0, 0],
        visual_block_out_channels=[8, 8, 16, 16, 16, 16],
        visual_downsample_factors=[[1, 2], 2, 2, 2, 2, 2],
        visual_attn_blocks=[0, 0, 0, 1, 0, 0],
    ),
}


def build_tiny_pipeline(resolution: int = 256, motion_modules: str = "all", seed: int = 0) -> LatentSyncPipeline:
    """Randomly initialised, scaled-down LatentSync pipeline (a few hundred thousand parameters).

    The weights depend only on ``seed``: the generator is seeded, then the U-Net, the VAE and the Whisper encoder
    are built in this order."""
    torch.manual_seed(seed)
    audio_dim = 64
    unet = LatentSyncUNet(
        block_out_channels=(16, 32),
        down_block_types=("DownBlockMotion", "CrossAttnDownBlockMotion"),
        up_block_types=("CrossAttnUpBlockMotion", "UpBlockMotion"),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=audio_dim,
        num_attention_heads=2,
        motion_num_attention_heads=2,
        motion_modules=motion_modules,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=0.18215,
    )
    whisper = WhisperAudioEncoder(
        WhisperConfig(
            d_model=audio_dim,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=128,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=128,
            num_mel_bins=80,
            max_source_positions=1500,
        )
    )
    return LatentSyncPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        audio_encoder=whisper.eval(),
        feature_extractor=WhisperFeatureExtractor(feature_size=80),
        scheduler=official_scheduler(),
        resolution=resolution,
    )


def tiny_syncnet_config(resolution: int = 64, num_frames: int = 16) -> dict[str, Any]:
    """Constructor arguments of the tiny StableSyncNet for faces of ``resolution`` (32 or 64) pixels; its visual
    input is the lower half of the faces, ``(num_frames * 3, resolution / 2, resolution)``."""
    if resolution not in TINY_SYNCNET_CONFIGS:
        raise ValueError(f"the tiny SyncNet is built for {' or '.join(map(str, TINY_SYNCNET_CONFIGS))}-pixel faces")
    return dict(TINY_SYNCNET_CONFIGS[resolution], visual_in_channels=num_frames * 3, norm_num_groups=4,
                num_frames=num_frames, resolution=resolution)


def build_tiny_syncnet(resolution: int = 64, num_frames: int = 16, **overrides: Any) -> StableSyncNet:
    """A randomly initialised tiny StableSyncNet (see [`tiny_syncnet_config`]); ``overrides`` change any
    constructor argument."""
    return StableSyncNet(**{**tiny_syncnet_config(resolution, num_frames), **overrides})


def build_tiny_videomae(classification: bool = False) -> VideoMAEModel | VideoMAEForVideoClassification:
    """A tiny VideoMAE (16 frames of 32 x 32) for TREPA tests; ``classification`` adds the fc_norm head."""
    config = VideoMAEConfig(image_size=32, patch_size=8, num_frames=16, tubelet_size=2, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            use_mean_pooling=True, num_labels=4)
    return VideoMAEForVideoClassification(config) if classification else VideoMAEModel(config)


def build_tiny_vgg() -> VGG16Features:
    """A 5-tap VGG-style trunk with few channels (LPIPS backbone for tests)."""
    return VGG16Features(channels=(4, 8, 8, 16, 16), convs_per_stage=(1, 1, 1, 1, 1))


def write_synthetic_clip(path: str, seed: int = 0, frames: int = 55, size: int = 64) -> str:
    """Write a stand-in "aligned face" clip: moving colour patterns at 25 fps with a modulated tone at 16 kHz."""
    from scipy.io import wavfile  # deferred: scipy is optional (train extra); float WAV files need it

    t = np.arange(int((frames / VIDEO_FPS + 0.2) * SAMPLE_RATE)) / SAMPLE_RATE
    wav = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) * (1 + np.sin(2 * np.pi * 3 * t))
    yy, xx = np.mgrid[0:size, 0:size]
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = os.path.join(tmp, "audio.wav")
        wavfile.write(wav_path, SAMPLE_RATE, wav.astype(np.float32))  # float samples, written as they are
        with VideoWriter(path, VIDEO_FPS, audio_path=wav_path) as writer:
            for i in range(frames):
                img = np.stack([(xx * 4 + i * 3 + seed * 40) % 256, (yy * 4) % 256, ((xx + yy) * 2 + i * 5) % 256], -1)
                writer.write(img.astype(np.uint8))
    return path


def save_tiny_training_models(directory: str, resolution: int = 64, seed: int = 0,
                              motion_modules: str = "all") -> dict[str, str]:
    """Save a tiny pipeline, SyncNet, VGG trunk and VideoMAE under ``directory``; return config overrides that
    point U-Net training at them (``components_from``, ``syncnet``, ``lpips_backbone``, ``lpips_heads``,
    ``trepa_model``)."""
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


# ---------------------------------------------------------------------------------------------------- two-person clips
SHARED_CLIP_FACES: dict[str, dict[str, str]] = {
    "demo1": {"close": "crop=600:600:306:432", "wide": "crop=900:900:156:282"},
    "demo2": {"close": "crop=800:800:161:77", "wide": "crop=1000:1000:61:0"},
}
"""ffmpeg crops of the face in the shared clips ``demo1_video.mp4`` and ``demo2_video.mp4`` (1080 x 1920): close
(the face about a third of the crop) and wide (another framing: switching between the two is a scene cut)."""


def _ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-v", "error", *args], check=True)


def crop_faces(videos: dict[str, str], folder: str, seconds: float, side: int = 360,
               crops: dict[str, dict[str, str]] = SHARED_CLIP_FACES) -> dict[tuple[str, str], str]:
    """Square ``side``-pixel face crops of the first ``seconds`` of each video in ``videos`` (name -> path), one per
    framing in ``crops[name]``, 25 fps H.264 with the video's own sound (16 kHz mono AAC); each video is decoded
    once. Returns ``{(name, framing): path}``."""
    out = {}
    for name, src in videos.items():
        framings = crops[name]
        graph = ";".join([f"[0:v]split={len(framings)}" + "".join(f"[{k}]" for k in framings)]
                         + [f"[{k}]{crop},scale={side}:{side},setsar=1,fps={VIDEO_FPS}[{k}v]"
                            for k, crop in framings.items()])
        args = ["-t", str(seconds), "-i", ffmpeg_path(src), "-filter_complex", graph]
        for framing in framings:
            out[name, framing] = os.path.join(folder, f"{name}_{framing}.mp4")
            args += ["-map", f"[{framing}v]", "-map", "0:a", "-c:v", "libx264", "-crf", "16", "-c:a", "aac",
                     "-ac", "1", "-ar", str(SAMPLE_RATE), ffmpeg_path(out[name, framing])]
        _ffmpeg(*args)
    return out


def side_by_side_clip(path: str, left: str, right: str, sound: str, starts: Sequence[float] = (0, 0, 0),
                      seconds: float = 6.0) -> str:
    """Two clips side by side (``left`` from ``starts[0]`` s, ``right`` from ``starts[1]`` s) with the sound of
    ``sound`` from ``starts[2]`` s, ``seconds`` long: a two-person video where one face speaks and the other moves
    its lips to words nobody hears."""
    inputs = []
    for clip, start in zip((left, right, sound), starts):
        inputs += ["-ss", str(start), "-t", str(seconds), "-i", ffmpeg_path(clip)]
    _ffmpeg(*inputs, "-filter_complex", f"[0:v][1:v]hstack,fps={VIDEO_FPS}[v]", "-map", "[v]", "-map", "2:a",
            "-c:v", "libx264", "-crf", "16", "-c:a", "aac", "-ac", "1", "-ar", str(SAMPLE_RATE), "-t", str(seconds),
            ffmpeg_path(path))
    return os.fspath(path)


def concat_clips(path: str, parts: Sequence[str]) -> str:
    """The clips ``parts`` (same size and codecs) one after the other, without re-encoding."""
    listing = os.fspath(path) + ".txt"
    with open(listing, "w") as fh:
        fh.writelines(f"file '{os.path.abspath(p)}'\n" for p in parts)
    try:
        _ffmpeg("-f", "concat", "-safe", "0", "-i", ffmpeg_path(listing), "-c", "copy", ffmpeg_path(path))
    finally:
        os.remove(listing)
    return os.fspath(path)
