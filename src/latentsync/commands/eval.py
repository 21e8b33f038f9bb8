"""``latentsync eval <subcommand> ...``: SyncNet accuracy, sync confidence and the video metrics report.

Each subcommand is a function ``(argv: list[str]) -> int`` in [`EVAL_COMMANDS`]; register more with
[`register_eval_command`] (or by adding an entry to the dict).

Before anything loads, each subcommand checks its data and the models it needs as training and inference do
([`latentsync.model_source.check_model_sources`]): a local path must exist, and a Hub id must be cached when the Hub
cannot be reached (offline mode, or no connection within a few seconds); FID's Inception weights, fetched by URL, must
be in torch hub's cache when they cannot be downloaded. Anything else ends the command at once with one line and exit
status 2, without the Hub libraries' retries. The options, the data and the output are checked before torch and the
models' libraries are imported (``--help`` and bad input answer in a fraction of a second).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ..data.clips import check_clip_source
from ..devices import DTYPE_NAMES, default_device, torch_dtype
from ..errors import LatentSyncInputError, ModelNotFoundError, first_line
from ..eval.config import (ALL_METRICS, I3D_FILENAME, I3D_REPO_ID, OFFICIAL_SYNCNET_V2_FILE, OFFICIAL_SYNCNET_V2_REPO,
                           VideoEvalConfig, check_report_output)
from ..media.audio import AUTOMATIC_TRACK, chosen_track
from ..media.files import check_side_output
from ..model_source import check_model_sources, is_hub_id, loading
from .run import track_number

logger = logging.getLogger(__name__)


def _add_runtime_options(p: argparse.ArgumentParser, dtype: bool = True, json_output: bool = True) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    if dtype:
        p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="fp32")
    if json_output:
        p.add_argument("--json", default=None, help="also write the result to this JSON file")


def at_least(least: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``least`` (a count, a batch size), refused before anything loads."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def sync_model_source(model: str, weights_name: str | None) -> str | tuple[str, str | None]:
    """What [`load_sync_model`] will read, for [`check_model_sources`]: a local path as it is, a Hub id with the
    file inside it (``weights_name``; None: a ``from_pretrained`` repository)."""
    path = os.path.expanduser(model)
    if os.path.exists(path):
        return os.path.join(path, weights_name) if weights_name and os.path.isdir(path) else model
    return (model, weights_name)


def check_models(sources: dict[str, str | tuple[str, str | None] | None], hint: str = "") -> None:
    """[`check_model_sources`] for an eval subcommand's options (``--model`` etc.), before anything loads; ``hint``
    is added to the one-line error (e.g. how to leave a metric out)."""
    try:
        check_model_sources(sources)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc}{hint}") from None


def _emit(result: dict, json_path: str | None) -> None:
    """Print the result as JSON (the command's output) and optionally write it to a file."""
    print(json.dumps(result, indent=2))
    if json_path:
        # deferred: latentsync.utils imports torch (the evaluation loaded it already)
        importlib.import_module("latentsync.utils").write_json_atomically(json_path, result, indent=2)
        logger.info("wrote %s", json_path)


# ---------------------------------------------------------------------------------------------------- syncnet-acc
def _syncnet_acc_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync eval syncnet-acc",
                                description="Accuracy (cos > 0.5; overall, on in-sync and on off-sync pairs) and BCE "
                                            "loss of a StableSyncNet on aligned clips; warns when it predicts one "
                                            "class only.")
    p.add_argument("--model", required=True,
                   help="StableSyncNet folder or Hub id (from_pretrained), or an official stable_syncnet.pt")
    p.add_argument("--subfolder", default=None, help="subfolder of --model holding the SyncNet")
    p.add_argument("--data", required=True,
                   help="folder of aligned 25 fps clips, a video file, a saved/Hub datasets dataset with mp4 bytes")
    p.add_argument("--split", default="train", help="dataset split (datasets sources only; default train)")
    p.add_argument("--video-column", default="video")
    p.add_argument("--num-samples", type=at_least(1), default=2048,
                   help="pairs to evaluate (half positive; default 2048)")
    p.add_argument("--batch-size", type=at_least(1), default=16)
    p.add_argument("--time-range", type=float, nargs=2, default=(0.0, 1.0), metavar=("START", "END"),
                   help="fraction of every clip to sample from (default 0 1)")
    p.add_argument("--min-negative-offset", type=at_least(1), default=1,
                   help="frames between negatives' video and audio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae", default="stabilityai/sd-vae-ft-mse", help="VAE for latent-space SyncNets")
    p.add_argument("--num-workers", type=at_least(0), default=0)
    _add_runtime_options(p)
    return p


def syncnet_acc(argv: list[str]) -> int:
    """``latentsync eval syncnet-acc``."""
    p = _syncnet_acc_parser()
    args = p.parse_args(argv)
    if not 0 <= args.time_range[0] < args.time_range[1] <= 1:
        p.error(f"--time-range needs 0 <= START < END <= 1, got {args.time_range[0]:g} {args.time_range[1]:g}")
    check_clip_source(args.data, "--data")
    if args.json:
        check_side_output(args.json, [], "--json")
    check_models({"--model": args.model})
    # deferred: the SyncNet, its data and the accuracy import torch and diffusers (seconds): the checks above run
    # without them
    sc = importlib.import_module("latentsync.eval.sync_confidence")
    StableSyncNet = importlib.import_module("latentsync.models.syncnet").StableSyncNet
    syncnet_data = importlib.import_module("latentsync.data.syncnet_dataset")
    evaluate_syncnet = importlib.import_module("latentsync.eval.syncnet_acc").evaluate_syncnet
    from torch.utils.data import DataLoader  # deferred: see above

    device, dtype = args.device or default_device(), torch_dtype(args.dtype)
    with loading("--model", args.model):
        model = sc.load_sync_model(args.model, subfolder=args.subfolder, device=device, dtype=dtype)
    if not isinstance(model, StableSyncNet):
        raise LatentSyncInputError(f"syncnet-acc needs a StableSyncNet (folder, Hub id or stable_syncnet.pt), and "
                                   f"--model {args.model} is a {type(model).__name__}")
    cfg = model.config
    clips = syncnet_data.ClipStore(args.data, resolution=cfg.resolution, lower_half=cfg.lower_half, split=args.split,
                                   video_column=args.video_column)
    clips.source.info().check_aligned_faces(args.data, "--data")  # raw videos: whole frames squashed into squares
    dataset = syncnet_data.SyncNetDataset(clips, args.num_samples, num_frames=cfg.num_frames,
                                          time_range=tuple(args.time_range),
                                          min_negative_offset=args.min_negative_offset, seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
    vae = None
    if cfg.latent_space:  # a latent-space SyncNet works on the VAE's latents
        check_models({"--vae": args.vae})
        from diffusers import AutoencoderKL  # deferred: seconds to import; only latent-space SyncNets need it

        with loading("--vae", args.vae):
            vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=dtype).to(device)
    result = evaluate_syncnet(model, loader, vae=vae, dtype=dtype)
    logger.info("SyncNet accuracy %.4f (in-sync pairs %.4f, off-sync pairs %.4f), loss %.4f on %d pairs",
                result.accuracy, result.positive_accuracy, result.negative_accuracy, result.loss, result.num_samples)
    if result.warning:
        logger.warning("%s", result.warning)
    _emit(result.as_dict(), args.json)
    return 0


# ---------------------------------------------------------------------------------------------------- sync-conf
def _sync_conf_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync eval sync-conf",
                                description="Audio-visual offset (frames) and sync confidence of talking-face videos.")
    p.add_argument("videos", nargs="+", help="videos to score (their own audio unless --audio)")
    p.add_argument("--model", default=None,
                   help="classic syncnet_v2.model file, StableSyncNet folder/Hub id, or official stable_syncnet.pt "
                        f"(default: {OFFICIAL_SYNCNET_V2_FILE} of {OFFICIAL_SYNCNET_V2_REPO})")
    p.add_argument("--weights-name", default=None, help="file inside the --model folder/repo to load")
    p.add_argument("--subfolder", default=None)
    p.add_argument("--audio", default=None, help="score against this audio instead (one video only)")
    p.add_argument("--audio-track", type=track_number, default=None, metavar="N",
                   help="score against this audio track (of --audio, or of each video), numbered from 1 as the log "
                        "and players number them (default: the track with the speech: "
                        f"{AUTOMATIC_TRACK})")
    p.add_argument("--vshift", type=at_least(0), default=15, help="largest offset tried, in frames (default 15)")
    p.add_argument("--batch-size", type=at_least(1), default=20)
    p.add_argument("--max-frames", type=at_least(1), default=None, help="only use the first N frames")
    p.add_argument("--aligned", action="store_true", help="videos already show aligned faces (skip detection)")
    _add_runtime_options(p)
    return p


def sync_conf(argv: list[str]) -> int:
    """``latentsync eval sync-conf``."""
    args = _sync_conf_parser().parse_args(argv)
    if args.audio and len(args.videos) != 1:
        raise LatentSyncInputError("--audio can only be used with a single video")
    model_id, weights = args.model, args.weights_name
    if model_id is None:
        model_id, weights = OFFICIAL_SYNCNET_V2_REPO, weights or OFFICIAL_SYNCNET_V2_FILE
    missing = [v for v in [*args.videos, args.audio] if v is not None and not os.path.isfile(v)]
    if missing:
        raise LatentSyncInputError(f"not found: {', '.join(missing)} (no such file)")
    for sound in [args.audio] if args.audio else args.videos:  # a track a file does not have: before the model loads
        chosen_track(sound, args.audio_track, "--audio-track")
    if args.json:  # never over a video it scores
        check_side_output(args.json, [v for v in [*args.videos, args.audio] if v is not None], "--json")
    check_models({"--model": sync_model_source(model_id, weights)},
                 "" if args.model else "; without --model the classic SyncNet above is used: pass --model with a "
                 "local syncnet_v2.model file or StableSyncNet folder")
    # deferred: the SyncNet and the face detector import torch, diffusers and scipy (seconds): the checks above run
    # without them
    sc = importlib.import_module("latentsync.eval.sync_confidence")
    with loading("--model", model_id):
        model = sc.load_sync_model(model_id, weights_name=weights, subfolder=args.subfolder,
                                   device=args.device or default_device(), dtype=torch_dtype(args.dtype))
    results: dict[str, dict] = {}
    failed = False
    for video in args.videos:
        try:
            est = sc.estimate_sync(video, model, audio=args.audio, vshift=args.vshift, batch_size=args.batch_size,
                                   max_frames=args.max_frames, faces_aligned=args.aligned,
                                   audio_track=args.audio_track)
        except LatentSyncInputError as exc:  # a video without a face, too short, ...: named; the others are scored
            if len(args.videos) == 1:
                raise LatentSyncInputError(f"{video}: {exc}") from None
            logger.error("%s: %s", video, exc)
            results[video], failed = {"error": str(exc)}, True
            continue
        logger.info("%s: offset %d frames, confidence %.3f, min distance %.3f", video, est.offset, est.confidence,
                    est.min_distance)
        results[video] = est.as_dict()
    scored = [r for r in results.values() if "error" not in r]
    if len(results) > 1 and scored:
        results["mean"] = {"confidence": sum(r["confidence"] for r in scored) / len(scored),
                           "abs_offset": sum(abs(r["offset"]) for r in scored) / len(scored)}
    _emit(results, args.json)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------- videos
def _videos_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentsync eval videos",
        description="PSNR/SSIM (same-named pairs), FID/FVD (sets) and LSE-C/LSE-D of generated videos.")
    p.add_argument("--generated", required=True, help="folder of generated videos (or one video)")
    p.add_argument("--reference", default=None,
                   help="folder of reference videos (same names for PSNR/SSIM), or one video")
    p.add_argument("--output", required=True, help="folder for metrics.json/.csv, summary.png/.html")
    p.add_argument("--metrics", default=",".join(ALL_METRICS), help=f"comma list from {','.join(ALL_METRICS)}")
    p.add_argument("--crop", choices=["face", "none"], default="face", help="compare faces (default) or frames")
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames of every video")
    p.add_argument("--fvd-start", type=int, default=20, help="first frame of the FVD clip (default 20)")
    p.add_argument("--fvd-clips", type=int, default=1, help="16-frame FVD clips per video (default 1)")
    p.add_argument("--fid-backbone", default=None,
                   help="FID Inception weights (.pth path or URL) or a TorchScript image encoder "
                        "(default: pt_inception-2015-12-05 from the pytorch-fid release)")
    p.add_argument("--fvd-backbone", default=None,
                   help="I3D TorchScript file, or Hub repo (or a local copy of one) holding "
                        f"auxiliary/i3d_torchscript.pt (default: {I3D_REPO_ID})")
    p.add_argument("--syncnet", default=None,
                   help="SyncNet for LSE-C/D: syncnet_v2.model file, StableSyncNet folder/Hub id or stable_syncnet.pt "
                        "(default: auxiliary/syncnet_v2.model of ByteDance/LatentSync-1.5)")
    p.add_argument("--syncnet-weights-name", default=None, help="file inside the --syncnet folder/repo")
    p.add_argument("--aligned", action="store_true",
                   help="generated videos show aligned faces (training clips): no face detection for the SyncNet")
    p.add_argument("--batch-size", type=int, default=32)
    _add_runtime_options(p, dtype=False, json_output=False)
    return p


def _load(what: str, flag: str, loader: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``loader(*args, **kwargs)``, with a download or file error turned into one clear message."""
    try:
        return loader(*args, **kwargs)
    except LatentSyncInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - download / file errors become one clear message
        first = first_line(exc)
        raise LatentSyncInputError(f"cannot load the {what} ({first}); pass {flag} <local file> or leave the metric "
                                   "out with --metrics") from exc


def videos_command(argv: list[str]) -> int:
    """``latentsync eval videos``."""
    args = _videos_parser().parse_args(argv)
    cfg = VideoEvalConfig(metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()), crop=args.crop,
                          crop_size=args.crop_size, max_frames=args.max_frames, fvd_start=args.fvd_start,
                          fvd_clips_per_video=args.fvd_clips, batch_size=args.batch_size, aligned=args.aligned)
    for flag, path in (("--generated", args.generated), ("--reference", args.reference)):
        if path is not None and not os.path.exists(path):
            raise LatentSyncInputError(f"{flag} {path} not found: give a folder of videos or one video")
    check_report_output(args.output)  # before the evaluation, not after it
    # the models of the chosen metrics, checked before anything loads: FID's Inception by URL (torch hub's cache),
    # the others on the Hub
    hint = "; or leave the metric out with --metrics"
    fid_problem = None
    if "fid" in cfg.metrics:
        try:
            # deferred: torch hub's cache folder comes from torch (the metrics import it, and scipy)
            importlib.import_module("latentsync.eval.metrics").check_fid_weights(args.fid_backbone,
                                                                                 "pass --fid-backbone FILE")
        except ModelNotFoundError as exc:
            fid_problem = str(exc)
    sources: dict[str, str | tuple[str, str | None] | None] = {}
    fid_spec = args.fid_backbone if "fid" in cfg.metrics else None
    if fid_spec and not os.path.exists(os.path.expanduser(fid_spec)) and is_hub_id(fid_spec):
        sources["--fid-backbone"] = fid_spec  # an FIDInceptionV3 saved with save_pretrained, on the Hub
    if "fvd" in cfg.metrics:
        spec = args.fvd_backbone or I3D_REPO_ID
        sources["--fvd-backbone"] = spec if os.path.exists(spec) else (spec, I3D_FILENAME)
    if "sync" in cfg.metrics:
        weights = args.syncnet_weights_name if args.syncnet else OFFICIAL_SYNCNET_V2_FILE
        sources["--syncnet"] = sync_model_source(args.syncnet or OFFICIAL_SYNCNET_V2_REPO, weights)
    try:
        check_models(sources, hint)
    except ModelNotFoundError as exc:  # both kinds missing: one line still
        raise ModelNotFoundError(f"{exc}; and {fid_problem}" if fid_problem else str(exc)) from None
    if fid_problem:
        raise ModelNotFoundError(fid_problem + hint)
    # deferred: the metrics, the SyncNet and the evaluation import torch, diffusers and scipy (seconds)
    metrics = importlib.import_module("latentsync.eval.metrics")
    sc = importlib.import_module("latentsync.eval.sync_confidence")
    videos = importlib.import_module("latentsync.eval.videos")
    device = args.device or default_device()
    frame_extractor = video_extractor = sync_model = None
    if "fid" in cfg.metrics:
        frame_extractor = _load("FID backbone", "--fid-backbone", metrics.load_frame_extractor, args.fid_backbone,
                                device)
    if "fvd" in cfg.metrics:
        video_extractor = _load("FVD backbone", "--fvd-backbone", metrics.load_video_extractor, args.fvd_backbone,
                                device)
    if "sync" in cfg.metrics:
        model_id = args.syncnet or OFFICIAL_SYNCNET_V2_REPO
        weights = args.syncnet_weights_name if args.syncnet else OFFICIAL_SYNCNET_V2_FILE
        sync_model = _load("SyncNet", "--syncnet", sc.load_sync_model, model_id, device=device, weights_name=weights)
    report = videos.evaluate_videos(args.generated, args.reference, cfg, frame_extractor, video_extractor, sync_model,
                                    device=device)
    paths = videos.write_report(report, args.output)
    logger.info("summary: %s", ", ".join(f"{k} {videos.format_value(v)}" for k, v in report["summary"].items()
                                         if not isinstance(v, (list, dict))))
    logger.info("wrote %s", ", ".join(paths.values()))
    return 0


# ---------------------------------------------------------------------------------------------------- dispatch
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
