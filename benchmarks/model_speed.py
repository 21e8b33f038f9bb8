"""Speed and memory of the model part (VAE encode, denoising, VAE decode) per 16-frame window.

Builds the full-size LatentSync architecture (1.27 B-parameter U-Net with temporal layers, SD VAE, Whisper-tiny
encoder) with random weights -- the cost is the same as with the official weights -- and times
``LatentSyncPipeline.generate_faces`` on one 16-frame window at each resolution and precision. The first setting
(fp32) is the naive baseline; ratios are measured in the same run.

    python benchmarks/model_speed.py --device cuda --resolutions 256 512 --dtypes fp32 fp16 bf16
    python benchmarks/model_speed.py --tiny            # the tiny test model, e.g. on a CPU
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import WhisperConfig, WhisperFeatureExtractor

from latentsync import LatentSyncPipeline, LatentSyncUNet, WhisperAudioEncoder
from latentsync.conversion import OFFICIAL_SCHEDULER_CONFIG
from latentsync.tiny import build_tiny_pipeline

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def full_size_pipeline(resolution: int) -> LatentSyncPipeline:
    with torch.device("cpu"):
        unet = LatentSyncUNet(motion_modules="all")
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, scaling_factor=0.18215,
        )
        whisper = WhisperAudioEncoder(WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6,
                                                    encoder_ffn_dim=1536, num_mel_bins=80))
    return LatentSyncPipeline(unet=unet, vae=vae, audio_encoder=whisper,
                              feature_extractor=WhisperFeatureExtractor(feature_size=80),
                              scheduler=DDIMScheduler(**OFFICIAL_SCHEDULER_CONFIG), resolution=resolution)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(pipe: LatentSyncPipeline, device: str, steps: int, frames: int, repeats: int) -> dict:
    res = pipe.config.resolution
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 255, (frames, res, res, 3), dtype=np.uint8)
    tokens = 10 * pipe.audio_encoder.num_feature_states
    ctx = torch.randn(frames, tokens, pipe.audio_encoder.config.d_model)
    noise = torch.randn(1, 4, 1, res // 8, res // 8)
    gen = torch.Generator().manual_seed(0)
    pipe.generate_faces(faces, ctx, noise, num_inference_steps=2, generator=gen)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = pipe.generate_faces(faces, ctx, noise, num_inference_steps=steps, generator=gen)
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"seconds": min(times), "fps": frames / min(times), "peak_gib": peak, "finite": bool(np.isfinite(out).all()),
            "mean_pixel": float(out.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="benchmark the tiny random model instead of the full size")
    args = p.parse_args()
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print(f"device: {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'res':>4} {'dtype':>5} {'s/window':>9} {'frames/s':>9} {'vs fp32':>8} {'peak GiB':>9}  ok")
    for res in args.resolutions:
        pipe = build_tiny_pipeline(resolution=res) if args.tiny else full_size_pipeline(res)
        pipe.set_progress_bar_config(disable=True)
        base = None
        for name in args.dtypes:
            pipe.to(args.device, DTYPES[name])
            r = bench(pipe, args.device, args.steps, args.frames, args.repeats)
            base = base or r["seconds"]
            print(f"{res:>4} {name:>5} {r['seconds']:>9.3f} {r['fps']:>9.2f} {base / r['seconds']:>7.2f}x "
                  f"{r['peak_gib']:>9.2f}  {r['finite']} (mean pixel {r['mean_pixel']:.1f})", flush=True)
        del pipe
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
