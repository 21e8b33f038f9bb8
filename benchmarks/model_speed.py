"""Speed and memory of the model part (VAE encode, denoising, VAE decode) per 16-frame window.

Builds the full-size LatentSync architecture (1.27 B-parameter U-Net with temporal layers, SD VAE, Whisper-tiny
encoder) with random weights -- the cost is the same as with the official weights -- and times
the pipeline's window steps (``prepare_condition_latents``, ``denoise``, ``decode_latents``) on one 16-frame window at each resolution, precision and sampler variant. The
first setting (fp32, first variant) is the naive baseline; ratios are measured in the same run. ``--variants``
compares samplers and DeepCache (names as in benchmarks/inference.py: ``ddim20``, ``ddim20+deepcache3``,
``dpm++10``, ...); PSNR is against the first variant's faces at the same precision (random weights: it measures how
far an approximation drifts, not lip-sync quality).

    python benchmarks/model_speed.py --device cuda --resolutions 256 512 --dtypes fp32 fp16 bf16
    python benchmarks/model_speed.py --device cuda --dtypes bf16 --variants ddim20 ddim20+deepcache3 dpm++10
    python benchmarks/model_speed.py --tiny            # the tiny test model, e.g. on a CPU
    python benchmarks/model_speed.py --flops --variants ddim20 ddim20+deepcache3 ddim20+deepcache5 dpm++10

``--flops`` counts the full-size U-Net's floating-point operations per window instead of timing (weights on the
``meta`` device: no memory, seconds on any CPU), which is what DeepCache and fewer steps save, hardware aside.
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import WhisperConfig, WhisperFeatureExtractor

from latentsync import LatentSyncPipeline, LatentSyncUNet, WhisperAudioEncoder
from latentsync.models import UNetFeatureCache
from latentsync.schedulers import OFFICIAL_SCHEDULER_CONFIG
from latentsync.testing import build_tiny_pipeline
from latentsync.utils import DTYPES


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


def parse_variant(name: str) -> dict:
    """``"dpm++10+deepcache3"`` -> scheduler, steps and DeepCache interval."""
    spec = {"scheduler": "ddim", "steps": 20, "deep_cache": 0}
    for part in re.findall(r"dpm\+\+\d*|[^+]+", name):
        if m := re.fullmatch(r"deepcache(\d+)", part):
            spec["deep_cache"] = int(m.group(1))
        elif m := re.fullmatch(r"(ddim|dpm\+\+|unipc|euler)(\d*)", part):
            spec["scheduler"], spec["steps"] = m.group(1), int(m.group(2) or 20)
        else:
            raise SystemExit(f"cannot parse variant {name!r}")
    return spec


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def generate_window(pipe: LatentSyncPipeline, faces: np.ndarray, ctx: torch.Tensor, noise: torch.Tensor, steps: int,
                    generator: torch.Generator, deep_cache: int = 0) -> np.ndarray:
    """One window as ``__call__`` runs it: condition latents, denoising with guidance 1.5, decoding."""
    condition = pipe.prepare_condition_latents(faces, generator)
    cache = UNetFeatureCache(pipe.unet, deep_cache) if deep_cache else None
    return pipe.decode_latents(pipe.denoise(noise, condition, ctx, steps, 1.5, generator, cache))


def bench(pipe: LatentSyncPipeline, device: str, steps: int, frames: int, repeats: int, deep_cache: int = 0) -> dict:
    res = pipe.config.resolution
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 255, (frames, res, res, 3), dtype=np.uint8)
    tokens = 10 * pipe.audio_encoder.num_feature_states
    ctx = torch.randn(frames, tokens, pipe.audio_encoder.config.d_model)
    noise = torch.randn(1, 4, 1, res // 8, res // 8)
    gen = torch.Generator().manual_seed(0)
    generate_window(pipe, faces, ctx, noise, 2, gen, deep_cache)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(1)
        out = generate_window(pipe, faces, ctx, noise, steps, gen, deep_cache)
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"seconds": min(times), "fps": frames / min(times), "peak_gib": peak, "finite": bool(np.isfinite(out).all()),
            "mean_pixel": float(out.mean()), "faces": out}


def unet_flops(resolution: int, variant: str, frames: int, cfg: bool = True, branch: int = 0) -> float:
    """U-Net floating-point operations to denoise one window with ``variant`` (full-size model, meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = parse_variant(variant)
    with torch.device("meta"):
        unet = LatentSyncUNet(motion_modules="all").eval()
        batch = 2 if cfg else 1
        x = torch.empty(batch, 13, frames, resolution // 8, resolution // 8)
        ctx = torch.empty(batch * frames, 50, 384)
    cache = UNetFeatureCache(unet, max(spec["deep_cache"], 1), branch)
    total = 0
    with torch.no_grad():
        for step in range(spec["steps"]):
            with FlopCounterMode(display=False) as counter:
                cache(x, torch.tensor(500), ctx, step=step)
            total += counter.get_total_flops()
    return float(total)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=None, help="sampler variants, e.g. ddim20 ddim20+deepcache3 "
                   "dpm++10 (default: ddim with --steps)")
    p.add_argument("--tiny", action="store_true", help="benchmark the tiny random model instead of the full size")
    p.add_argument("--flops", action="store_true", help="count full-size U-Net FLOPs per window instead of timing")
    args = p.parse_args()
    if args.flops:
        variants = args.variants or [f"ddim{args.steps}"]
        print(f"full-size U-Net, {args.frames}-frame window, CFG batch of 2; TFLOP per window (ratio vs first)")
        for res in args.resolutions:
            base = None
            for variant in variants:
                flops = unet_flops(res, variant, args.frames)
                base = base or flops
                print(f"{res:>4} {variant:>20} {flops / 1e12:>9.1f} TFLOP {base / flops:>6.2f}x fewer", flush=True)
        return
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print(f"device: {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    variants = args.variants or [f"ddim{args.steps}"]
    print(f"{'res':>4} {'dtype':>5} {'variant':>20} {'s/window':>9} {'frames/s':>9} {'vs first':>8} {'PSNR':>7} "
          f"{'peak GiB':>9}  ok")
    for res in args.resolutions:
        pipe = build_tiny_pipeline(resolution=res) if args.tiny else full_size_pipeline(res)
        pipe.set_progress_bar_config(disable=True)
        base = None
        for name in args.dtypes:
            pipe.to(args.device, DTYPES[name])
            reference = None
            for variant in variants:
                spec = parse_variant(variant)
                pipe.set_scheduler(spec["scheduler"])
                r = bench(pipe, args.device, spec["steps"], args.frames, args.repeats, spec["deep_cache"])
                base = base or r["seconds"]
                reference = r["faces"] if reference is None else reference
                print(f"{res:>4} {name:>5} {variant:>20} {r['seconds']:>9.3f} {r['fps']:>9.2f} "
                      f"{base / r['seconds']:>7.2f}x {psnr(r['faces'], reference):>7.2f} {r['peak_gib']:>9.2f}  "
                      f"{r['finite']} (mean pixel {r['mean_pixel']:.1f})", flush=True)
        del pipe
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
