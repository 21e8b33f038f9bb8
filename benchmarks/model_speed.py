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

``--throughput`` times the denoiser alone (20 DDIM steps with CFG, no VAE) for several windows per U-Net call and
eager against compiled execution, and prints frames/s next to the achieved TFLOP/s (the U-Net's counted FLOPs over
the time) and its share of the device's peak: the data-sheet dense bf16/fp16 peak of known GPUs, and a large
matrix product measured in the same run. The naive path (one window per call, eager, bf16 or the first dtype) is the
baseline of each resolution; ``fp8`` modes report their drift against the bf16 latents:

    python benchmarks/model_speed.py --throughput --device cuda --resolutions 256 512 --dtypes bf16 fp16 \
        --windows 1 2 4 --modes eager compiled
    python benchmarks/model_speed.py --throughput --tiny --resolutions 128 --dtypes fp32 --windows 1 2 4 \
        --modes eager compiled-eager        # the ratios on a CPU (compiled-eager: dynamo trace without inductor)

Modes: ``eager`` (the pipeline's default U-Net), ``fused`` (fused pooled GroupNorm, channels-last), ``compiled``
(``fused`` + ``torch.compile`` of the whole U-Net step), ``compiled-regional`` (``fused`` + ``torch.compile`` of each
repeated block: shorter compilation), ``compiled-graphs`` (+ CUDA graphs), ``compiled-eager`` (dynamo only, for CPUs
where inductor takes too long), ``fp8`` (``compiled`` + float8 linear layers, Hopper/Ada only).
"""

from __future__ import annotations

import argparse
import copy
import re
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import WhisperConfig, WhisperFeatureExtractor

from latentsync import LatentSyncPipeline, LatentSyncUNet, WhisperAudioEncoder
from latentsync.models import UNetFeatureCache
from latentsync.models.compiled import allow_recompiles
from latentsync.schedulers import OFFICIAL_SCHEDULER_CONFIG
from latentsync.testing import build_tiny_pipeline
from latentsync.utils import DTYPES


def full_size_pipeline(resolution: int, device: str = "cpu") -> LatentSyncPipeline:
    """The full-size architecture with random weights, built directly on ``device`` (seconds on a GPU)."""
    with torch.device(device):
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


def unet_flops(resolution: int, variant: str, frames: int, cfg: bool = True, branch: int = 0,
               tiny: bool = False) -> float:
    """U-Net floating-point operations to denoise one window with ``variant`` (full-size or ``tiny`` model, meta
    device)."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = parse_variant(variant)
    with torch.device("meta"):
        unet = (build_tiny_pipeline().unet if tiny else LatentSyncUNet(motion_modules="all")).eval()
        batch = 2 if cfg else 1
        x = torch.empty(batch, 13, frames, resolution // 8, resolution // 8)
        ctx = torch.empty(batch * frames, 50, unet.config.cross_attention_dim)
    cache = UNetFeatureCache(unet, max(spec["deep_cache"], 1), branch)
    total = 0
    with torch.no_grad():
        for step in range(spec["steps"]):
            with FlopCounterMode(display=False) as counter:
                cache(x, torch.tensor(500), ctx, step=step)
            total += counter.get_total_flops()
    return float(total)


# Dense (no sparsity) bf16/fp16 tensor-core peak in TFLOP/s from the vendors' data sheets, by device-name substring.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10": 125.0, "RTX 4090": 165.0}


def spec_peak_tflops(device: str) -> float | None:
    """The data-sheet peak of a known CUDA device (None elsewhere)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def matmul_tflops(device: str, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """TFLOP/s of an ``n``-sized square matrix product in ``dtype`` (on a CPU: n=1024, as a reference point)."""
    if not device.startswith("cuda"):
        n, repeats = 1024, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def set_mode(pipe: LatentSyncPipeline, mode: str) -> None:
    """Put the pipeline's U-Net in ``mode`` (see the module docstring)."""
    pipe.disable_compiled_denoiser()
    fused = mode != "eager"
    pipe.unet.set_fused_norm(fused)
    pipe.unet.to(memory_format=torch.channels_last if fused else torch.contiguous_format)
    if mode == "fp8":
        pipe.enable_fp8()
    if mode.startswith("compiled") or mode == "fp8":
        pipe.compile_denoiser(backend="eager" if mode == "compiled-eager" else "inductor",
                              cuda_graphs=mode == "compiled-graphs", regional=mode == "compiled-regional")


def bench_denoiser(pipe: LatentSyncPipeline, device: str, windows: int, steps: int, frames: int,
                   repeats: int = 1) -> dict:
    """Seconds of ``steps`` DDIM steps with CFG for ``windows`` windows in one U-Net call (after a warm-up that
    also compiles; the fastest of ``repeats`` runs), peak memory, and the final latents."""
    from latentsync.window_batch import stack_windows

    res = pipe.config.resolution
    gen = torch.Generator().manual_seed(0)
    size = res // pipe.vae_scale_factor
    tokens = 10 * pipe.audio_encoder.num_feature_states
    conds = [torch.randn(1, 9, frames, size, size, generator=gen) for _ in range(windows)]
    audios = [torch.randn(frames, tokens, pipe.audio_encoder.config.d_model, generator=gen) for _ in range(windows)]
    batch = stack_windows([c.to(device, pipe.unet.dtype) for c in conds], audios, frames, windows,
                          always_mask=getattr(pipe, "_compiled_step", None) is not None)
    noise = torch.randn(1, 4, 1, size, size, generator=gen)
    compiled = getattr(pipe, "_compiled_step", None)
    before = compiled.compile_seconds if compiled is not None else 0.0
    start = time.perf_counter()
    pipe.denoise(noise, batch.condition, batch.audio, 2, 1.5, frame_mask=batch.frame_mask)  # warm-up / compile
    sync(device)
    warm = time.perf_counter() - start
    compile_s = (compiled.compile_seconds - before) if compiled is not None else 0.0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        latents = pipe.denoise(noise, batch.condition, batch.audio, steps, 1.5, frame_mask=batch.frame_mask)
        sync(device)
        seconds = min(seconds, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"seconds": seconds, "per_window": seconds / windows, "fps": windows * frames / seconds,
            "peak_gib": peak, "compile_s": compile_s if compiled is not None else float("nan"), "warm_s": warm,
            "latents": latents.float().cpu()}


def sdpa_check(pipe: LatentSyncPipeline, device: str, frames: int) -> dict:
    """[`attention_report`] of the pipeline's U-Net; on CUDA with one step of the real shape run on the fused SDPA
    kernels only (a fallback to the math kernel shows as ``fused_kernels_only: False``)."""
    from latentsync.models.attention import attention_report

    size = pipe.config.resolution // pipe.vae_scale_factor
    unet = pipe.unet
    x = torch.zeros(2, unet.config.in_channels, frames, size, size, device=device, dtype=unet.dtype)
    ctx = torch.zeros(2 * frames, 50, unet.config.cross_attention_dim, device=device, dtype=unet.dtype)

    def run() -> None:
        with torch.no_grad():
            unet(x, torch.tensor(999, device=device), encoder_hidden_states=ctx)

    return attention_report(unet, run)


def throughput_table(args: argparse.Namespace) -> None:
    """Frames/s, TFLOP/s and share of peak per resolution, dtype, windows per call and mode (see the docstring)."""
    if args.device.startswith("cuda"):
        allow_recompiles(64)  # one compiled graph per shape: resolutions x windows x dtypes
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print(f"device: {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    spec_peak = spec_peak_tflops(args.device)
    measured = {name: matmul_tflops(args.device, DTYPES[name]) for name in args.dtypes}
    print("peak: data sheet " + (f"{spec_peak:.0f} TFLOP/s" if spec_peak else "unknown") + "; measured matmul "
          + ", ".join(f"{name} {tf:.1f} TFLOP/s" for name, tf in measured.items()), flush=True)
    header = ("| faces | dtype | windows/call | mode | s / window | frames / s | TFLOP/s | % data-sheet peak "
              "| % matmul | vs naive | compile s | peak GPU GiB | drift vs bf16 |")
    rows = [header, "|" + "---|" * 13]
    print(header, flush=True)
    for res in args.resolutions:
        pipe = build_tiny_pipeline(resolution=res) if args.tiny else full_size_pipeline(res, args.device)
        pipe.set_progress_bar_config(disable=True)
        flops_window = unet_flops(res, f"ddim{args.steps}", args.frames, tiny=args.tiny)
        naive, reference = None, None
        for name in args.dtypes:
            pipe.to(args.device, DTYPES[name])
            print(f"attention at {res} px, {name}: {sdpa_check(pipe, args.device, args.frames)}", flush=True)
            original_unet = pipe.unet
            for mode in args.modes:
                if mode == "fp8":  # quantisation is in place and one-way: on a copy
                    pipe.unet = copy.deepcopy(original_unet)
                eager_mode = mode in ("eager", "fused")
                if not eager_mode and args.compiled_dtypes and name not in args.compiled_dtypes:
                    continue
                try:
                    set_mode(pipe, mode)
                except RuntimeError as exc:  # FP8 or CUDA graphs on a device without them
                    print(f"| {res} | {name} | - | {mode} | skipped: {exc} |", flush=True)
                    continue
                for windows in args.windows if eager_mode else args.compiled_windows or args.windows:
                    r = bench_denoiser(pipe, args.device, windows, args.steps, args.frames, args.repeats)
                    naive = naive or r["per_window"]
                    if name == "bf16" and mode == "eager" and reference is None:
                        reference = r["latents"][:1]
                    drift = "-"
                    if mode == "fp8" and reference is not None:
                        drift = f"{float((r['latents'][:1] - reference).norm() / reference.norm()):.3f}"
                    tflops = flops_window * windows / r["seconds"] / 1e12
                    share = f"{100 * tflops / spec_peak:.1f} %" if spec_peak else "-"
                    row = (f"| {res} px | {name} | {windows} | {mode} | {r['per_window']:.3f} | {r['fps']:.2f} | "
                           f"{tflops:.3g} | {share} | {100 * tflops / measured[name]:.2g} % | "
                           f"{naive / r['per_window']:.2f}x | {r['compile_s']:.1f} | {r['peak_gib']:.2f} | {drift} |")
                    rows.append(row)
                    print(row, flush=True)
            pipe.unet = original_unet
            set_mode(pipe, "eager")
        del pipe
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.table:
        with open(args.table, "w") as fh:
            fh.write("\n".join(rows) + "\n")


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
    p.add_argument("--throughput", action="store_true", help="denoiser frames/s, TFLOP/s and share of peak per "
                   "windows per call and mode")
    p.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4], help="windows per U-Net call (--throughput)")
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                   choices=["eager", "fused", "compiled", "compiled-regional", "compiled-graphs", "compiled-eager",
                            "fp8"])
    p.add_argument("--compiled-windows", type=int, nargs="+", default=None,
                   help="windows per call for the compiled modes (default: --windows); each is one compilation")
    p.add_argument("--compiled-dtypes", nargs="+", default=None, help="dtypes for the compiled modes (default: all)")
    p.add_argument("--table", default=None, help="also write the --throughput table (markdown) to this file")
    args = p.parse_args()
    if args.throughput:
        throughput_table(args)
        return
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
