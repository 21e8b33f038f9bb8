"""GPU check of U-Net training: mixed precision, gradient checkpointing, resume, and full-size step cost.

1. Tiny models, synthetic clips: ``train_unet.py`` stage 2 for 3 steps in fp16 and in bf16 with gradient
   checkpointing, then kill-free resume from step 2 (the step-3 loss must match).
2. Full-size architectures with random weights (official U-Net 1.27 B, SD VAE, SyncNet 16_pixel_attn, VGG-16,
   VideoMAE-base): seconds per stage-2 step and peak GPU memory at 256 px, batch 1, 16 frames, for the
   stage2 and stage2_efficient trainable sets.

    python benchmarks/unet_train_gpu_check.py --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def tiny_runs(out: str) -> dict:
    from latentsync.testing import save_tiny_training_models, write_synthetic_clip

    clips = os.path.join(out, "clips")
    os.makedirs(clips, exist_ok=True)
    for c in range(3):
        write_synthetic_clip(os.path.join(clips, f"clip{c}.mp4"), seed=c)
    ov = save_tiny_training_models(os.path.join(out, "models"))
    ov["train_data"] = clips
    results = {}
    for precision in ("fp16", "bf16"):
        losses = {}
        for name, extra in (("full", ["overwrite_output_dir=true"]), ("resumed", ["resume_from_checkpoint=latest"])):
            run = os.path.join(out, f"run_{precision}")
            if name == "resumed":  # drop the last checkpoint and the step-3 record, then resume from step 2
                import shutil

                shutil.rmtree(os.path.join(run, "checkpoints", "checkpoint-3"))
                os.replace(os.path.join(run, "losses.jsonl"), os.path.join(run, "losses_full.jsonl"))
            cmd = [sys.executable, os.path.join(ROOT, "train", "train_unet.py"), "--config",
                   os.path.join(ROOT, "train", "configs", "unet_tiny.yaml"), f"output_dir={run}",
                   f"mixed_precision={precision}", "gradient_checkpointing=true", "max_train_steps=3",
                   "checkpointing_steps=2", "use_ema=true", "report_to=tensorboard",
                   *[f"{k}={v}" for k, v in ov.items()], *extra]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-4000:])
                raise SystemExit(f"{precision} {name} failed")
            with open(os.path.join(run, "losses.jsonl")) as fh:
                losses[name] = {r["step"]: r for r in map(json.loads, fh)}
        results[precision] = {"step3_full": losses["full"][3]["loss"], "step3_resumed": losses["resumed"][3]["loss"],
                              "losses_full": {k: v["loss"] for k, v in losses["full"].items()},
                              "parts_step1": losses["full"][1]}
        print(precision, json.dumps(results[precision]), flush=True)
    return results


def full_size(variant: str, precision: str, steps: int = 4) -> dict:
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import VideoMAEConfig, VideoMAEModel, WhisperConfig, WhisperFeatureExtractor

    from latentsync.schedulers import OFFICIAL_SCHEDULER_CONFIG
    from latentsync.models import LatentSyncUNet, WhisperAudioEncoder
    from latentsync.models.syncnet import StableSyncNet
    from latentsync.training.components import TrainingComponents
    from latentsync.training.config import load_config
    from latentsync.training.losses import LPIPSLoss, SyncLoss, TREPALoss, VGG16Features
    from latentsync.training.unet_trainer import compute_losses, select_trainable

    cfg = load_config(os.path.join(ROOT, "train", "configs", f"unet_{variant}.yaml"), ["train_data=x"])
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # one process measures several precisions
    acc = Accelerator(mixed_precision=precision)
    dev = acc.device
    wd = torch.bfloat16 if precision == "bf16" else torch.float16
    torch.cuda.reset_peak_memory_stats()
    with torch.device(dev):
        unet = LatentSyncUNet(motion_modules=cfg.motion_modules)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, scaling_factor=0.18215)
        audio = WhisperAudioEncoder(WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6,
                                                  encoder_ffn_dim=1536, num_mel_bins=80))
        sync = SyncLoss(StableSyncNet.from_preset("16_pixel_attn"))
        lpips = LPIPSLoss(VGG16Features(), "uniform")
        trepa = TREPALoss(VideoMAEModel(VideoMAEConfig(use_mean_pooling=True))) if cfg.trepa_loss_weight else None
    comps = TrainingComponents(unet, vae, audio, WhisperFeatureExtractor(feature_size=80),
                               DDIMScheduler(**OFFICIAL_SCHEDULER_CONFIG), sync, lpips, trepa)
    for m in (vae, audio, sync, lpips, trepa):
        if m is not None:
            m.requires_grad_(False).to(dtype=wd)
    names = select_trainable(unet, cfg.trainable_modules)
    n_train = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    unet.enable_gradient_checkpointing()
    vae.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    unet, opt = acc.prepare(unet, opt)
    gen = torch.Generator(device=dev).manual_seed(0)
    batch = {"gt": torch.rand(1, 16, 3, 256, 256, device=dev, generator=gen) * 2 - 1,
             "ref": torch.rand(1, 16, 3, 256, 256, device=dev, generator=gen) * 2 - 1,
             "mel": torch.randn(1, 1, 80, 52, device=dev, generator=gen)}
    ctx = torch.randn(16, 50, 384, device=dev, generator=gen)
    times, last = [], {}
    for i in range(steps):
        torch.cuda.synchronize()
        t = time.time()
        losses = compute_losses(batch, ctx, comps, unet, cfg, acc)
        acc.backward(losses["loss"])
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.time() - t)
        last = {k: round(v.item(), 5) for k, v in losses.items()}
    res = {"variant": variant, "precision": precision, "trainable_tensors": len(names),
           "trainable_M": round(n_train / 1e6, 2), "unet_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
           "s_per_step_after_warmup": round(float(np.mean(times[1:])), 3), "first_step_s": round(times[0], 2),
           "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2), "losses": last}
    print(json.dumps(res), flush=True)
    del unet, opt, comps, vae, audio, sync, lpips, trepa
    acc.free_memory()
    torch.cuda.empty_cache()
    return res


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--skip-tiny", action="store_true")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(torch.cuda.get_device_name(0), torch.__version__, flush=True)
    report = {}
    if not args.skip_tiny:
        report["tiny"] = tiny_runs(args.out)
    report["full"] = [full_size("stage2", "bf16"), full_size("stage2_efficient", "bf16"),
                      full_size("stage2", "fp16")]
    with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
