"""``latentsync prepare INPUT OUTPUT``: raw videos -> aligned, synced, filtered clips as a datasets dataset, on this
machine (``--workers N`` processes) or on a Ray cluster (``--engine ray [--address ...]``).

The options and the folders are checked before torch and the models' libraries are imported (``--help``, bad values
and a missing input folder answer in a fraction of a second).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os

from ..data.prepare.config import PrepareConfig, check_datasets_installed, check_folders, check_parallelism

logger = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    d = PrepareConfig()
    p = argparse.ArgumentParser(
        prog="latentsync prepare",
        description="Turn a folder of raw talking-head videos into a LatentSync training dataset (resumable).")
    p.add_argument("input", help="folder of raw videos (searched recursively)")
    p.add_argument("output", help="output folder (dataset/, summary.md, work/ with per-video state and clips)")
    p.add_argument("--resolution", type=int, choices=[256, 512], default=d.resolution)
    p.add_argument("--min-seconds", type=float, default=d.min_seconds, help="shortest clip (default 5)")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="longest clip (default 10)")
    p.add_argument("--scene-threshold", type=float, default=d.scene_threshold,
                   help="PySceneDetect adaptive threshold (default 2)")
    p.add_argument("--no-sync", action="store_true", help="skip the SyncNet offset correction and filter")
    p.add_argument("--syncnet", default=None,
                   help="syncnet_v2.model file, StableSyncNet folder/Hub id or stable_syncnet.pt "
                        "(default: auxiliary/syncnet_v2.model of ByteDance/LatentSync-1.5)")
    p.add_argument("--syncnet-weights-name", default=None, help="file inside the --syncnet folder/repo")
    p.add_argument("--min-sync-confidence", type=float, default=None,
                   help="default 3 (classic SyncNet) or 0.2 (StableSyncNet)")
    p.add_argument("--max-sync-offset", type=int, default=d.max_sync_offset, help="frames (default 6)")
    p.add_argument("--quality", default=d.quality,
                   help="auto (hyperIQA if available, else sharpness), sharpness, hyperiqa, hyperiqa:<repo or path>")
    p.add_argument("--quality-threshold", type=float, default=None,
                   help="minimum quality score (default: hyperIQA 40, sharpness 8)")
    p.add_argument("--workers", type=int, default=None,
                   help="local engine: parallel processes (default 1); Ray: videos decoded at once (default: the "
                        "cluster's CPUs)")
    p.add_argument("--device", default="cpu", help="device of SyncNet / hyperIQA (default cpu)")
    scale = p.add_argument_group("scale out (Ray)")
    scale.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: a process pool on this machine (default); ray: the same work on a Ray cluster, "
                            "model stages on actors (needs the ray extra: pip install 'latentsync[ray]')")
    scale.add_argument("--address", default=None,
                       help="Ray cluster to join: auto (the one `ray start` runs on this node) or ray://HOST:10001 "
                            "(default: start Ray on this machine)")
    scale.add_argument("--actors", type=int, default=None,
                       help="Ray: actors per model stage, sync and quality (default: one per GPU of the cluster "
                            "with --device cuda, else 1)")
    p.add_argument("--max-shard-size", default=d.max_shard_size)
    p.add_argument("--retry-failed", action="store_true", help="redo videos that failed with an error")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run with other settings")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the dataset to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    return p


def prepare(argv: list[str]) -> int:
    """``latentsync prepare INPUT OUTPUT [options]``."""
    p = parser()
    args = p.parse_args(argv)
    if args.engine == "local" and (args.address or args.actors):
        p.error("--address and --actors are options of --engine ray")
    config = PrepareConfig(
        resolution=args.resolution, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
        scene_threshold=args.scene_threshold, sync=not args.no_sync, syncnet=args.syncnet,
        syncnet_weights_name=args.syncnet_weights_name, min_sync_confidence=args.min_sync_confidence,
        max_sync_offset=args.max_sync_offset, quality=args.quality, quality_threshold=args.quality_threshold,
        max_shard_size=args.max_shard_size,
    )
    check_datasets_installed()
    check_folders(args.input, args.output)
    check_parallelism(args.workers, args.actors)
    # deferred: the run imports torch, OpenCV and the SyncNet (seconds); the options are checked above without them
    prepare_dataset = importlib.import_module("latentsync.data.prepare.run").prepare_dataset
    try:
        summary = prepare_dataset(args.input, args.output, config, num_workers=args.workers, device=args.device,
                                  retry_failed=args.retry_failed, overwrite=args.overwrite, engine=args.engine,
                                  ray_address=args.address, actors=args.actors)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (RunInterrupted): the finished videos are kept
        name = getattr(exc, "signal_name", "Ctrl-C")
        logger.error("stopped by %s: the videos finished so far are kept in %s; run the same command again to "
                     "continue (the video in progress is redone)", name, os.path.join(args.output, "work"))
        return getattr(exc, "exit_code", 130)
    if args.push_to_hub:
        # deferred: the Hub upload imports datasets (seconds)
        push_prepared = importlib.import_module("latentsync.data.prepare.dataset").push_prepared
        push_prepared(args.output, args.push_to_hub, private=args.private or None, max_shard_size=args.max_shard_size)
        logger.info("pushed %d clips to https://huggingface.co/datasets/%s", summary.clips, args.push_to_hub)
    return 0
