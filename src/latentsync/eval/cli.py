"""``latentsync eval <subcommand> ...``: dispatch to the evaluation tools.

Each subcommand is a function ``(argv: list[str]) -> int`` in [`EVAL_COMMANDS`]; register more with
[`register_eval_command`] (or by adding an entry to the dict).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _device(name: str | None) -> str:
    from ..cli import default_device

    return name or default_device()


def _emit(result: dict, json_path: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        with open(json_path, "w") as fh:
            fh.write(text + "\n")
        logger.info("wrote %s", json_path)


# ---------------------------------------------------------------------------------------------------- syncnet-acc


def _syncnet_acc_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync eval syncnet-acc",
                                description="Accuracy (cos > 0.5) and BCE loss of a StableSyncNet on aligned clips.")
    p.add_argument("--model", required=True,
                   help="StableSyncNet folder or Hub id (from_pretrained), or an official stable_syncnet.pt")
    p.add_argument("--subfolder", default=None, help="subfolder of --model holding the SyncNet")
    p.add_argument("--data", required=True,
                   help="folder of aligned 25 fps clips, a video file, a saved/Hub datasets dataset with mp4 bytes")
    p.add_argument("--split", default="train", help="dataset split (datasets sources only; default train)")
    p.add_argument("--video-column", default="video")
    p.add_argument("--num-samples", type=int, default=2048, help="pairs to evaluate (half positive; default 2048)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--time-range", type=float, nargs=2, default=(0.0, 1.0), metavar=("START", "END"),
                   help="fraction of every clip to sample from (default 0 1)")
    p.add_argument("--min-negative-offset", type=int, default=1, help="frames between negatives' video and audio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae", default="stabilityai/sd-vae-ft-mse", help="VAE for latent-space SyncNets")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    return p


def syncnet_acc(argv: list[str]) -> int:
    """``latentsync eval syncnet-acc``."""
    args = _syncnet_acc_parser().parse_args(argv)
    from torch.utils.data import DataLoader

    from ..data.syncnet_dataset import ClipStore, SyncNetDataset
    from .sync_confidence import load_sync_model
    from .syncnet_acc import evaluate_syncnet

    device, dtype = _device(args.device), DTYPES[args.dtype]
    model = load_sync_model(args.model, subfolder=args.subfolder, device=device, dtype=dtype)
    from ..models.syncnet import StableSyncNet

    if not isinstance(model, StableSyncNet):
        raise SystemExit("syncnet-acc needs a StableSyncNet (folder, Hub id or stable_syncnet.pt)")
    cfg = model.config
    clips = ClipStore(args.data, resolution=cfg.resolution, lower_half=cfg.lower_half, split=args.split,
                      video_column=args.video_column)
    dataset = SyncNetDataset(clips, args.num_samples, num_frames=cfg.num_frames, time_range=tuple(args.time_range),
                             min_negative_offset=args.min_negative_offset, seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
    vae = None
    if cfg.latent_space:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=dtype).to(device)
    result = evaluate_syncnet(model, loader, vae=vae, dtype=dtype)
    logger.info("SyncNet accuracy %.4f, loss %.4f on %d pairs", result.accuracy, result.loss, result.num_samples)
    _emit(result.as_dict(), args.json)
    return 0


# ---------------------------------------------------------------------------------------------------- sync-conf


def _sync_conf_parser() -> argparse.ArgumentParser:
    from .sync_confidence import OFFICIAL_SYNCNET_V2_FILE, OFFICIAL_SYNCNET_V2_REPO

    p = argparse.ArgumentParser(prog="latentsync eval sync-conf",
                                description="Audio-visual offset (frames) and sync confidence of talking-face videos.")
    p.add_argument("videos", nargs="+", help="videos to score (their own audio unless --audio)")
    p.add_argument("--model", default=None,
                   help="classic syncnet_v2.model file, StableSyncNet folder/Hub id, or official stable_syncnet.pt "
                        f"(default: {OFFICIAL_SYNCNET_V2_FILE} of {OFFICIAL_SYNCNET_V2_REPO})")
    p.add_argument("--weights-name", default=None, help="file inside the --model folder/repo to load")
    p.add_argument("--subfolder", default=None)
    p.add_argument("--audio", default=None, help="score against this audio instead (one video only)")
    p.add_argument("--vshift", type=int, default=15, help="largest offset tried, in frames (default 15)")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--max-frames", type=int, default=None, help="only use the first N frames")
    p.add_argument("--aligned", action="store_true", help="videos already show aligned faces (skip detection)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def sync_conf(argv: list[str]) -> int:
    """``latentsync eval sync-conf``."""
    args = _sync_conf_parser().parse_args(argv)
    from .sync_confidence import OFFICIAL_SYNCNET_V2_FILE, OFFICIAL_SYNCNET_V2_REPO, estimate_sync, load_sync_model

    if args.audio and len(args.videos) != 1:
        raise SystemExit("--audio can only be used with a single video")
    model_id, weights = args.model, args.weights_name
    if model_id is None:
        model_id, weights = OFFICIAL_SYNCNET_V2_REPO, weights or OFFICIAL_SYNCNET_V2_FILE
    model = load_sync_model(model_id, weights_name=weights, subfolder=args.subfolder, device=_device(args.device),
                            dtype=DTYPES[args.dtype])
    results = {}
    for video in args.videos:
        est = estimate_sync(video, model, audio=args.audio, vshift=args.vshift, batch_size=args.batch_size,
                            max_frames=args.max_frames, faces_aligned=args.aligned)
        logger.info("%s: offset %d frames, confidence %.3f, min distance %.3f", video, est.offset, est.confidence,
                    est.min_distance)
        results[video] = est.as_dict()
    if len(results) > 1:
        confs = [r["confidence"] for r in results.values()]
        results["mean"] = {"confidence": sum(confs) / len(confs),
                           "abs_offset": sum(abs(r["offset"]) for r in results.values()) / len(confs)}
    _emit(results, args.json)
    return 0


# ---------------------------------------------------------------------------------------------------- dispatch

from .videos import videos_command  # noqa: E402  (PSNR/SSIM/FID/FVD/LSE report over folders)

EVAL_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "syncnet-acc": syncnet_acc,
    "sync-conf": sync_conf,
    "videos": videos_command,
}


def register_eval_command(name: str, command: Callable[[list[str]], int]) -> None:
    """Add ``latentsync eval <name>``; ``command`` receives the remaining arguments and returns an exit code."""
    EVAL_COMMANDS[name] = command


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``latentsync eval``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: latentsync eval {" + ",".join(EVAL_COMMANDS) + "} [options]\n\nsubcommands: "
              + ", ".join(EVAL_COMMANDS) + " (use '<subcommand> --help' for options)")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in EVAL_COMMANDS:
        print(f"latentsync eval: unknown subcommand {name!r}; choose one of {', '.join(EVAL_COMMANDS)}",
              file=sys.stderr)
        return 2
    return EVAL_COMMANDS[name](rest)
