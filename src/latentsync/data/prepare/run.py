"""Preparing every video of a folder: the settings check, per-video state files (resume), the engine that runs the
videos (the local process pool here, or Ray: [`latentsync.data.prepare.ray_engine`]), the dataset and the summary."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import dataclasses
import functools
import importlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import torch
from tqdm.auto import tqdm

from ...errors import LatentSyncInputError, ModelNotFoundError, first_line
from ...eval import sync_confidence as sc
from ...interrupts import STOP_SIGNALS, signals_held
from ...media.constants import VIDEO_EXTENSIONS
from ...media.constants import VIDEO_FPS as FPS
from ...model_source import check_model_sources
from ...tempfiles import write_atomically
from ...utils import write_json_atomically
from ..clips import PREPARE_MARKER
from ..quality import QualityScorer, SharpnessScorer, load_quality_scorer
from .config import (DROP_REASONS, DROPPED_CLIP_COLUMNS, DROPPED_VIDEO_COLUMNS, VIDEO_REASONS,
                     NoClipsKeptError, PrepareConfig, PrepareStorageError, PrepareSummary, check_datasets_installed,
                     check_folders, check_parallelism, drop_amount, storage_cause)
from .dataset import build_prepared_dataset
from .planning import scan_input, source_text, video_key
from .process import failed_record, fresh_clips_dir, process_video, source_fingerprint, sync_threshold
from .sync import SyncChecker, load_sync_checker

logger = logging.getLogger(__name__)

_WORKER: dict = {}


class VideoJob(NamedTuple):
    """One video to process: its path, its path relative to the input folder, its clip folder and state file."""

    path: str
    relpath: str
    clips_dir: str
    state_path: str


@dataclasses.dataclass
class StageModels:
    """The sync and quality models of a run: those loaded (and so checked) in the main process, the caller's own
    objects (``given_*``: the only ones sent to workers, which load their own otherwise) and the quality scorer the
    workers load (``quality_spec``: ``sharpness`` when ``auto`` fell back here; None: the config's)."""

    sync: SyncChecker | None
    quality: QualityScorer
    given_sync: SyncChecker | None = None
    given_quality: QualityScorer | None = None
    quality_spec: str | None = None


def set_threads(threads: int) -> None:
    """The CPU threads torch and OpenCV use in this worker (its share of the machine)."""
    torch.set_num_threads(max(1, threads))
    cv2.setNumThreads(max(1, threads))


def worker_sync_checker(config: PrepareConfig, device: str, given: SyncChecker | None = None) -> SyncChecker | None:
    """The sync step's model in a worker: the caller's ``given`` checker, else loaded from the config (None when the
    sync step is off)."""
    if given is not None:
        return given
    return load_sync_checker(config, device) if config.sync else None


def worker_quality_scorer(config: PrepareConfig, device: str, given=None, spec: str | None = None):
    """The quality step's scorer in a worker: the caller's ``given`` scorer, else loaded from ``spec`` (what the
    main process settled on, see [`_load_models`]) or the config."""
    if given is not None:
        return given
    return load_quality_scorer(spec or config.quality, config.quality_threshold, device=device)


def _stop_worker(signum: int, frame) -> None:
    """A worker process's handler of SIGINT and SIGTERM: the first one stops the video in progress
    (``KeyboardInterrupt``: its partial clips are removed and no state is written, so the next run redoes it) and
    makes every later job of this worker return at once; later signals are ignored."""
    if _WORKER.get("stopping"):
        return
    _WORKER["stopping"] = True
    if _WORKER.get("busy"):
        raise KeyboardInterrupt(f"stopped by signal {signum}")


def _init_worker(config: PrepareConfig, device: str, sync_checker, quality_scorer, threads: int,
                 quality_spec: str | None = None, busy=None) -> None:
    """Per-process setup: thread counts and the models of the sync and quality steps (loaded once per worker);
    ``busy``: a worker of the local engine's pool, which counts in this shared integer while it processes a video
    and stops on SIGINT / SIGTERM ([`_stop_worker`]); they were blocked while it started (see [`_run_local`]), a
    signal that came meanwhile is handled now."""
    if busy is not None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, _stop_worker)
        _WORKER["busy_count"] = busy
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    set_threads(threads)
    _WORKER["config"] = config
    _WORKER["sync"] = worker_sync_checker(config, device, sync_checker)
    _WORKER["quality"] = worker_quality_scorer(config, device, quality_scorer, quality_spec)


def _load_models(config: PrepareConfig, device: str, sync_checker, quality_scorer):
    """Load (and so validate, downloading weights once) the SyncNet and the quality scorer before any work starts."""
    if sync_checker is None and config.sync:
        if config.syncnet is None:
            source = (sc.OFFICIAL_SYNCNET_V2_REPO, sc.OFFICIAL_SYNCNET_V2_FILE)
        elif os.path.exists(config.syncnet):
            source = config.syncnet
        else:
            source = (config.syncnet, config.syncnet_weights_name)
        try:
            check_model_sources({"--syncnet": source})
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"{exc}; or skip the sync step with --no-sync") from None
        try:
            sync_checker = load_sync_checker(config, device)
        except Exception as exc:  # noqa: BLE001 - turned into one clear message
            first = first_line(exc)
            raise LatentSyncInputError(
                f"cannot load the SyncNet for the sync step ({first}); pass --syncnet <syncnet_v2.model file, "
                "StableSyncNet folder or Hub id> or --no-sync") from exc
    if quality_scorer is None:
        try:
            quality_scorer = load_quality_scorer(config.quality, config.quality_threshold, device=device)
        except (OSError, ValueError, RuntimeError) as exc:
            first = first_line(exc)
            raise LatentSyncInputError(f"cannot load the quality scorer {config.quality!r}: {first}") from exc
    # workers load their own copies; "auto" that fell back is passed on as "sharpness" (no second attempt)
    spec = "sharpness" if config.quality == "auto" and isinstance(quality_scorer, SharpnessScorer) else None
    return sync_checker, quality_scorer, spec


def describe_filters(config: PrepareConfig, sync_checker, quality_scorer) -> dict[str, dict[str, str]]:
    """For each filter (scenes, faces, sync, quality): ``{"status": ran | skipped | fell back, "detail": ...}``."""
    filters = {
        "scenes": {"status": "ran", "detail": f"PySceneDetect adaptive detector, threshold {config.scene_threshold}"},
        "faces": {"status": "ran", "detail": f"MediaPipe; runs of face frames cut into {config.min_seconds:g}-"
                                             f"{config.max_seconds:g} s clips"},
    }
    if not config.sync:
        filters["sync"] = {"status": "skipped", "detail": "--no-sync: offsets not corrected, no clip dropped for sync"}
    elif sync_checker is None:
        filters["sync"] = {"status": "skipped", "detail": "no SyncNet given"}
    else:
        model = getattr(sync_checker, "model", None)
        name = config.syncnet or f"{sc.OFFICIAL_SYNCNET_V2_FILE} of {sc.OFFICIAL_SYNCNET_V2_REPO}"
        kind = type(model).__name__ if model is not None else type(sync_checker).__name__
        filters["sync"] = {"status": "ran", "detail": (
            f"{kind} ({name}): keep confidence >= {sync_threshold(config, sync_checker):g} and "
            f"|offset| <= {config.max_sync_offset} frames; offsets corrected")}
    reason = getattr(quality_scorer, "fallback_reason", None)
    detail = f"{quality_scorer.name}: keep score >= {quality_scorer.threshold:g}"
    filters["quality"] = ({"status": "fell back", "detail": f"{detail} ({reason})"} if reason
                          else {"status": "ran", "detail": detail})
    return filters


def _worker_job(path: str, relpath: str, clips_dir: str, state_path: str) -> dict:
    """Process one video in a worker and persist its state atomically (the resume marker)."""
    if _WORKER.get("stopping"):  # the run was stopped: the jobs still queued in this worker do nothing
        raise KeyboardInterrupt("stopped")
    config = _WORKER["config"]
    t0 = time.time()
    busy = _WORKER.get("busy_count")
    if busy is not None:
        with busy.get_lock():
            busy.value += 1
    _WORKER["busy"] = True
    try:
        fresh_clips_dir(clips_dir)
        try:
            result = process_video(path, relpath, clips_dir, config, _WORKER.get("sync"), _WORKER.get("quality"))
        except Exception as exc:  # noqa: BLE001 - recorded per video so one bad file does not stop the run
            storage = storage_cause(exc, clips_dir)
            if storage is not None:  # a full disk stops the run; no state: the next run redoes the video
                raise storage from exc
            logger.error("failed on %s: %s", relpath, exc)
            result = failed_record(relpath, traceback.format_exc(limit=8), path=path)
        result["seconds_processing"] = round(time.time() - t0, 2)
        write_json_atomically(state_path, result, indent=1)
    finally:
        _WORKER["busy"] = False
        if busy is not None:
            with busy.get_lock():
                busy.value -= 1
    return result


ENGINES = ("local", "ray")


def prepare_dataset(
    input_dir: str,
    output_dir: str,
    config: PrepareConfig | None = None,
    num_workers: int | None = None,
    device: str = "cpu",
    retry_failed: bool = False,
    overwrite: bool = False,
    sync_checker: SyncChecker | None = None,
    quality_scorer=None,
    build_dataset: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
    actors: int | None = None,
) -> PrepareSummary:
    """Prepare every video under ``input_dir`` into ``output_dir`` (resumable; see the module docstring).

    Args:
        num_workers: local engine: parallel processes (default 1, which runs in this process); Ray engine: videos
            decoded at once (default: the cluster's CPUs).
        device: torch device for SyncNet and the quality model.
        retry_failed: redo videos whose previous attempt raised an unexpected error.
        overwrite: start from scratch when ``output_dir`` holds a run with other settings.
        sync_checker / quality_scorer: use these instead of loading them from the config (tests, custom models;
            they must be picklable when ``num_workers > 1`` or on Ray).
        build_dataset: write the ``datasets`` shards at the end.
        engine: ``local`` (a process pool on this machine) or ``ray`` (the same stages on a Ray cluster, see
            [`latentsync.data.prepare.ray_engine`]); the output is the same, and either engine resumes the other's.
        ray_address: the Ray cluster to join (``auto``, ``HOST:6379``, ``ray://HOST:10001``); None: the one in
            ``RAY_ADDRESS``, else a new Ray on this machine. A Ray this process already joined is used as it is.
        actors: Ray engine: actors per model stage (sync, quality); default one per GPU of the cluster with
            ``device="cuda"``, else 1.
    """
    if engine not in ENGINES:
        raise LatentSyncInputError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    if build_dataset:
        check_datasets_installed()
    check_folders(input_dir, output_dir)
    check_parallelism(num_workers, actors)
    args = (input_dir, output_dir, config or PrepareConfig(), device, retry_failed, overwrite, sync_checker,
            quality_scorer, build_dataset)
    if engine == "local":
        with _storage_errors(output_dir):
            return _prepare(*args, functools.partial(_run_local, num_workers=num_workers or 1), device)
    ray_engine = _ray_engine()
    with ray_engine.session(ray_address):  # joined (or started) before any file is written
        ray_engine.check_cluster(device)
        # on Ray the models run on the cluster's workers: here they are only loaded to check them (on the CPU)
        with _storage_errors(output_dir):
            return _prepare(*args, functools.partial(ray_engine.run_on_ray, max_videos=num_workers, actors=actors),
                            "cpu")


@contextlib.contextmanager
def _storage_errors(output_dir: str) -> Iterator[None]:
    """Within the block the run writes to ``output_dir``: a file it cannot write there (a full disk, a folder turned
    read-only) becomes one [`PrepareStorageError`] line instead of a library's traceback."""
    try:
        yield
    except LatentSyncInputError:
        raise
    except Exception as exc:
        cause = storage_cause(exc)
        if cause is None:
            raise
        reason = cause.strerror or first_line(cause)
        kept = f"run the same command again: the videos finished so far are kept in {os.path.join(output_dir, 'work')}"
        path = os.path.abspath(os.fspath(cause.filename)) if cause.filename else None
        if path is None:
            where = f"the output folder {output_dir} or the temporary folder {tempfile.gettempdir()}"
            message = f"could not write a file of the run ({where}): {reason}; make room and {kept}"
        elif path == os.path.abspath(output_dir) or path.startswith(os.path.abspath(output_dir) + os.sep):
            message = (f"could not write to the output folder {output_dir} ({source_text(path)}): {reason}; make room "
                       f"(or make the folder writable) and {kept}")
        else:  # a temporary file (the clips' sound is written to the system's temporary folder first)
            message = (f"could not write {source_text(path)}, outside the output folder: {reason}; make room there "
                       f"(or point TMPDIR to a folder with room) and {kept}")
        raise PrepareStorageError(message) from exc


def _prepare(input_dir: str, output_dir: str, config: PrepareConfig, device: str, retry_failed: bool,
             overwrite: bool, sync_checker: SyncChecker | None, quality_scorer, build_dataset: bool,
             run_engine: Callable[..., Iterator[tuple[str, dict]]], check_device: str) -> PrepareSummary:
    """[`prepare_dataset`] with its engine: ``run_engine(jobs, config, device, models)`` yields each finished
    video's record; the models are loaded (and so checked) here on ``check_device``."""
    t0 = time.time()
    work = os.path.join(output_dir, "work")
    state_dir, clips_root = os.path.join(work, "state"), os.path.join(work, "clips")
    config_path = os.path.join(output_dir, PREPARE_MARKER)
    # the input first: a folder without videos changes nothing in the output (an earlier run's included)
    found, duplicates, other_files = scan_input(input_dir, exclude=[output_dir])
    if not found:
        n = sum(other_files.values())
        others = (f" (only {n} other file{'s' * (n != 1)}: {', '.join(f'{e} {c}' for e, c in other_files.items())})"
                  if n else "")
        raise LatentSyncInputError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {input_dir}{others}")
    restart = False  # an earlier run with other settings, discarded
    if os.path.isfile(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        if previous != config.identity():
            earlier = _kept_clips(state_dir)
            if earlier and not overwrite:
                raise LatentSyncInputError(
                    f"{output_dir} holds {earlier} clips prepared with other settings "
                    f"({_diff(previous, config.identity())}); use another output folder or --overwrite")
            restart = True

    videos = sorted([*found, *duplicates])
    jobs, results, changed, missing = [], {}, 0, 0
    for rel in found:
        key, path = video_key(rel), os.path.join(input_dir, rel)
        state_path, clips_dir = os.path.join(state_dir, key + ".json"), os.path.join(clips_root, key)
        if not restart and os.path.isfile(state_path):
            with open(state_path) as f:
                previous = json.load(f)
            if previous.get("source_file", source_fingerprint(path)) != source_fingerprint(path):
                changed += 1  # replaced or rewritten since its state was made: its clips are of the old file
            elif not all(os.path.isfile(os.path.join(clips_dir, c["file"])) for c in previous["clips"]):
                missing += 1  # work/clips cleaned up: the dataset is built from these files
            elif not (retry_failed and previous.get("status") == "failed"):
                results[rel] = previous
                continue
        jobs.append(VideoJob(path, rel, clips_dir, state_path))
    for rel, same in duplicates.items():
        results[rel] = duplicate_record(rel, same)
    again = [f"{changed} changed since the last run"] if changed else []
    again += [f"{missing} whose clip files in work/clips are gone"] if missing else []
    logger.info("%d videos: %d already done, %d to process%s%s", len(videos), len(results) - len(duplicates),
                len(jobs), f" ({', '.join(again)})" if again else "",
                f", {len(duplicates)} other name{'s' * (len(duplicates) != 1)} (links) of these skipped"
                if duplicates else "")
    # the models before anything is written: one that cannot be loaded leaves the output as it was (a new one not
    # made, an earlier run not discarded)
    loaded = _load_models(config, check_device, sync_checker, quality_scorer) if jobs else None
    if restart:
        if not earlier:
            logger.info("%s kept no clip with its previous settings: starting again with these", output_dir)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(os.path.join(output_dir, "dataset"), ignore_errors=True)
    os.makedirs(output_dir, exist_ok=True)
    write_json_atomically(config_path, config.identity(), indent=1)  # first: it marks the folder as a prepare output
    os.makedirs(state_dir, exist_ok=True)
    os.makedirs(clips_root, exist_ok=True)

    kept = sum(len(r["clips"]) for r in results.values())
    filters_path = os.path.join(work, "filters.json")
    if jobs:
        loaded_sync, loaded_quality, quality_spec = loaded
        models = StageModels(loaded_sync, loaded_quality, sync_checker, quality_scorer, quality_spec)
        filters = describe_filters(config, loaded_sync, loaded_quality)
        write_json_atomically(filters_path, filters, indent=1)
    elif os.path.isfile(filters_path):
        with open(filters_path) as f:
            filters = json.load(f)
    else:
        filters = {}
    bar = tqdm(total=len(jobs), desc="prepare", unit="video")
    bar.set_postfix(clips=kept)
    if jobs:
        finished = run_engine(jobs, config, device, models)
        try:
            for relpath, res in finished:
                results[relpath] = res
                kept += len(res["clips"])
                bar.update(1)
                bar.set_postfix(clips=kept)
        finally:  # on Ctrl-C the engine stops its workers now, not when the generator is collected
            finished.close()
    bar.close()

    summary = _summarise(videos, results)
    summary.filters, summary.other_files = filters, other_files
    if build_dataset and summary.clips:
        summary.dataset_path = build_prepared_dataset(output_dir, [results[v] for v in videos], config)
    elif not summary.clips:  # no dataset rather than an empty one (or a stale one of an earlier run)
        shutil.rmtree(os.path.join(output_dir, "dataset"), ignore_errors=True)
    summary.elapsed_seconds = round(time.time() - t0, 1)
    write_json_atomically(os.path.join(output_dir, "summary.json"), dataclasses.asdict(summary), indent=1)
    write_atomically(os.path.join(output_dir, "summary.md"),
                     lambda tmp: Path(tmp).write_text(summary.table() + "\n", encoding="utf-8"))
    _write_csv(os.path.join(output_dir, "dropped_clips.csv"), DROPPED_CLIP_COLUMNS, summary.dropped_clips)
    _write_csv(os.path.join(output_dir, "dropped_videos.csv"), DROPPED_VIDEO_COLUMNS, summary.dropped_videos)
    logger.info("data preparation summary:\n%s", summary.table())
    if not summary.clips:
        raise NoClipsKeptError(_no_clips_message(output_dir, summary), summary)
    return summary


def duplicate_record(relpath: str, same: str) -> dict:
    """The record of a path that is another video of the folder under a second name (not processed, no state)."""
    return {"source": source_text(relpath), "status": "dropped", "frames": 0, "clips": [],
            "dropped": {"duplicate": {"count": 1, "seconds": 0.0}},
            "error": source_text(f"the same file as {same}, which is processed instead")}


def _run_local(jobs: list[VideoJob], config: PrepareConfig, device: str, models: StageModels,
               num_workers: int) -> Iterator[tuple[str, dict]]:
    """The local engine: every video's stages in one worker, ``num_workers`` worker processes (1: this process);
    yields ``(relpath, record)`` as videos finish."""
    if num_workers <= 1:
        saved = dict(_WORKER)
        _init_worker(config, device, models.sync, models.quality, threads=os.cpu_count() or 1)
        try:
            for job in jobs:
                yield job.relpath, _worker_job(*job)
        finally:
            _WORKER.clear()
            _WORKER.update(saved)
        return
    ctx = multiprocessing.get_context("spawn")  # MediaPipe and torch are not fork-safe
    threads = max(1, (os.cpu_count() or 1) // num_workers)
    busy = ctx.Value("i", 0)  # workers processing a video
    # each worker loads its own models: only the caller's own objects are sent (pickled)
    pool = cf.ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_init_worker,
                                  initargs=(config, device, models.given_sync, models.given_quality, threads,
                                            models.quality_spec, busy))
    futures: dict[cf.Future, VideoJob] = {}
    try:
        # the workers start (on the first submits) with SIGINT / SIGTERM blocked, which they inherit until their
        # handler is in place: a Ctrl-C reaches them too, and one that came while they import torch and MediaPipe
        # (20-30 s on a busy machine) killed each with a traceback; and in this process, a Ctrl-C in the middle of a
        # submit could leave a worker started but not yet known to the pool, which then outlived the stop
        with signals_held():
            futures.update((pool.submit(_worker_job, *job), job) for job in jobs)
        for fut in cf.as_completed(futures):
            job = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - a crashed worker leaves no state: the video is redone next run
                if storage_cause(exc) is not None:  # a full disk (see _worker_job): the run stops
                    raise
                logger.error("worker crashed on %s: %s", job.relpath, exc)
                res = failed_record(job.relpath, str(exc), status="crashed")
            yield job.relpath, res
    except BaseException:  # Ctrl-C, SIGTERM, or the caller stopped early: the queued videos must not run
        _stop_workers(pool, busy)
        raise
    finally:
        pool.shutdown(wait=True)


def _stop_workers(pool: cf.ProcessPoolExecutor, busy, timeout: float = 10.0) -> None:
    """Stop a run's workers now: cancel the videos not started, interrupt the workers (one processing a video removes
    its partial clips and writes no state: the next run redoes it; a job handed to a worker afterwards returns at
    once; one still starting holds the signal until it could handle it) and kill them all once no video is in
    progress (``busy``, the count of workers processing one, is 0), or after ``timeout`` seconds. Without this,
    shutting the pool down would first process every queued video."""
    known = getattr(pool, "_processes", None) or {}  # the pool's own dict: its thread still updates it after shutdown
    manager = getattr(pool, "_executor_manager_thread", None)
    processes = [p for p in known.values() if p.is_alive()]
    # the pool's own thread cancels the queued videos (cancelling its futures from here broke that thread with an
    # InvalidStateError once a worker died, and the run then waited for the whole timeout)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            os.kill(process.pid, signal.SIGINT)
        except OSError:  # it ended meanwhile
            pass
    count = busy.get_obj()  # read without the lock: a worker that died holding it must not hang the stop
    deadline = time.monotonic() + timeout
    while count.value > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if count.value > 0:
        logger.warning("%d workers did not stop within %g s: killed", count.value, timeout)
    # no video is in progress: the workers have nothing left to write (those still starting have none), and letting
    # each one exit normally (tearing down its models) took 5-10 s on a busy machine after the user had asked to stop
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout)
    # the pool's thread ends once it has seen every worker go; a worker it knows of that was not among those above
    # (clean-clone CI runs found one still starting after a stop, cause not found) is killed too, not left to run
    # its imports to the end and hold up the program's exit
    if manager is not None:
        manager.join(timeout)
    for process in list(known.values()):
        if process.is_alive():
            process.kill()
            process.join(timeout)


def _ray_engine():
    """The Ray engine module, or a clear error when Ray is not installed."""
    try:  # imported when asked for: Ray is optional (the ray extra) and slow to import
        return importlib.import_module("latentsync.data.prepare.ray_engine")
    except ImportError as exc:
        if getattr(exc, "name", None) != "ray":
            raise
        raise LatentSyncInputError(
            "--engine ray needs Ray, which is not installed: pip install 'latentsync[ray]' (or pip install ray); "
            "or use the local engine (--engine local)") from None


def _kept_clips(state_dir: str) -> int:
    """Clips kept by the finished videos of an earlier run (from their state files)."""
    if not os.path.isdir(state_dir):
        return 0
    total = 0
    for name in os.listdir(state_dir):
        if name.endswith(".json"):
            with open(os.path.join(state_dir, name)) as f:
                total += len(json.load(f).get("clips", []))
    return total


def _write_csv(path: str, columns: tuple[str, ...], rows: list[dict]) -> None:
    """``rows`` as a CSV file with ``columns`` (other keys ignored), written atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write)


def _dropped_video(relpath: str, record: dict) -> dict | None:
    """The ``dropped_videos`` row of a video that gave no clip (None when it gave clips): a whole-video reason with
    the file's error, else the reason that took most of it with what each reason took."""
    if record["clips"]:
        return None
    source, dropped = source_text(relpath), record.get("dropped", {})
    seconds = round(sum(d["seconds"] for d in dropped.values()), 2)
    whole = [reason for reason in VIDEO_REASONS if reason in dropped]
    if whole:
        lines = [line.strip() for line in source_text(str(record.get("error", ""))).splitlines() if line.strip()]
        detail = lines[-1] if lines else DROP_REASONS[whole[0]]
        if record.get("status") == "failed":
            state = f"work/state/{record.get('key', video_key(relpath))}.json"
            detail += f" (traceback in {state}; --retry-failed redoes it)"
        elif record.get("status") == "crashed":
            detail = f"its worker process died ({detail}); the next run redoes it"
        return {"source": source, "reason": whole[0], "seconds": seconds, "detail": detail}
    if not dropped:
        return {"source": source, "reason": "unreadable", "seconds": 0.0, "detail": "no video frame was decoded"}
    ranked = sorted(dropped.items(), key=lambda kv: -kv[1]["seconds"])
    detail = ", ".join(f"{reason} {drop_amount(reason, d)}" for reason, d in ranked)
    return {"source": source, "reason": ranked[0][0], "seconds": seconds, "detail": detail}


def _no_clips_message(output_dir: str, summary: PrepareSummary) -> str:
    """One line: that nothing was kept, the main reasons, and for sync drops the confidences next to the threshold."""
    reasons = sorted(summary.dropped.items(), key=lambda kv: -kv[1]["seconds"])
    why = ", ".join(f"{r} {drop_amount(r, d)}" for r, d in reasons[:4]) or "no video could be read"
    message = f"kept no clip from {summary.videos} videos (dropped: {why})"
    confidences = [c["sync_confidence"] for c in summary.dropped_clips if c.get("sync_confidence") is not None]
    if confidences:
        message += (f"; sync confidences of the dropped clips {min(confidences):.3g} to {max(confidences):.3g} "
                    f"(sync filter: {summary.filters.get('sync', {}).get('detail', 'see the summary')})")
    return (f"{message}; see {os.path.join(output_dir, 'summary.md')}, "
            f"{os.path.join(output_dir, 'dropped_videos.csv')} and {os.path.join(output_dir, 'dropped_clips.csv')}")


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys)


def _summarise(videos: list[str], results: dict) -> PrepareSummary:
    s = PrepareSummary(videos=len(videos))
    for rel in videos:
        r = results.get(rel)
        if r is None:
            continue
        if r.get("status") == "done":
            s.videos_done += 1
        else:
            s.videos_failed += 1
        s.source_seconds += r.get("frames", 0) / FPS
        s.clips += len(r["clips"])
        s.clip_seconds += sum(c["num_frames"] for c in r["clips"]) / FPS
        s.dropped_clips += [{"source": source_text(rel), **c} for c in r.get("dropped_clips", [])]
        if (row := _dropped_video(rel, r)) is not None:
            s.dropped_videos.append(row)
        if "audio_track" in r:
            s.audio_tracks.append({"source": source_text(rel), **r["audio_track"]})
        for reason, d in r.get("dropped", {}).items():
            agg = s.dropped.setdefault(reason, {"count": 0, "seconds": 0.0})
            agg["count"] += d["count"]
            agg["seconds"] = round(agg["seconds"] + d["seconds"], 2)
    s.clip_seconds = round(s.clip_seconds, 2)
    s.source_seconds = round(s.source_seconds, 2)
    return s
