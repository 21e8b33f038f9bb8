"""A tiny random-weight LatentSync pipeline: same code paths as the real model, seconds on a CPU.

It produces noise-quality mouths. It exists so the CLI, the app and the tests run on a machine without the
official weights; real lip sync needs the official checkpoints.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import WhisperConfig, WhisperFeatureExtractor

from .conversion import OFFICIAL_SCHEDULER_CONFIG
from .models import LatentSyncUNet, WhisperAudioEncoder
from .pipeline import LatentSyncPipeline


def build_tiny_pipeline(resolution: int = 256, motion_modules: str = "all", seed: int = 0) -> LatentSyncPipeline:
    """Randomly initialised, scaled-down LatentSync pipeline (a few hundred thousand parameters)."""
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
        scheduler=DDIMScheduler(**OFFICIAL_SCHEDULER_CONFIG),
        resolution=resolution,
    )
