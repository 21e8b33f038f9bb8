"""``latentsync prepare --engine ray``: the per-video stages of [`latentsync.data.prepare.process`] scheduled on a Ray
cluster (or on a Ray started on this machine), with the same output and the same resume markers as the local engine.

* CPU stages as tasks: per video, one task (a Ray generator) probes and decodes it, finds the scene cuts and the
  faces, plans the clips, then streams the planned clips out aligned, one at a time (at most ``AHEAD`` waiting);
  a kept clip is written to mp4 by another task.
* Model stages as actor pools: SyncNet (offset and confidence) and the quality scorer, each actor holding its model
  (with ``device="cuda"``, a sync and a quality actor share each GPU of the cluster). A clip goes to the actor with
  the fewest calls waiting; quality is scored only for clips the sync step kept.
* This process (the driver) records each clip's verdict in plan order and, when a video's last clip is in, writes
  the video's state file exactly as a local worker does: either engine resumes the other's run.

On a cluster every node needs latentsync (the same version) and the input and output folders at the same path (a
shared file system): the tasks read the videos and write the clips there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Iterator

import ray
from ray.exceptions import RayError, RayTaskError

from ...errors import LatentSyncInputError, first_line
from ...utils import write_json_atomically
from ..quality import SharpnessScorer
from .config import PrepareConfig, storage_cause
from .process import (ClipCheck, PlannedClip, VideoScan, aligned_clips, check_quality, check_sync, failed_record,
                      fresh_clips_dir, record_clip, record_unreached, scan_video, scorer_name, write_clip)
from .run import StageModels, VideoJob, set_threads, worker_quality_scorer, worker_sync_checker

logger = logging.getLogger(__name__)

GPU_SHARE = 0.5  # of a GPU per model actor: one sync and one quality actor per GPU
# items (aligned clips) a video's task may have yielded that the driver has not taken yet; the task waits beyond
# (a private option of Ray's generator tasks, the one Ray Data uses to bound its streams)
AHEAD = 2


# ---------------------------------------------------------------------------------------------------- the stages
@ray.remote(num_cpus=1)
def _scan_and_align(path: str, relpath: str, clips_dir: str, config: PrepareConfig):
    """CPU task: yields the video's scan (its record and plan, without audio and anchors), then, when clips are
    planned, its audio and each planned clip aligned ([`PlannedClip`]), in plan order."""
    set_threads(1)
    fresh_clips_dir(clips_dir)
    scan = scan_video(path, relpath, config)
    yield dataclasses.replace(scan, audio=None, anchors=None)
    if scan.plan:
        yield scan.audio
        yield from aligned_clips(path, scan, config)


# 0 CPUs: the alignment tasks can hold every CPU while they wait for the driver to take their clips, and a writer
# that needed one could then never start; encoding a clip is short beside decoding it and finding its faces
@ray.remote(num_cpus=0)
def _write(clip: PlannedClip, audio, offset: int, key: str, clips_dir: str, config: PrepareConfig) -> str:
    """CPU task: write a kept clip; returns its file name."""
    set_threads(1)
    return write_clip(clip, audio, offset, key, clips_dir, config)


@ray.remote
class _SyncStage:
    """Actor holding a SyncNet: each call checks one clip's offset and confidence ([`check_sync`])."""

    def __init__(self, config: PrepareConfig, device: str, given=None):
        set_threads(1)
        self.config = config
        self.checker = worker_sync_checker(config, device, given)

    def ready(self) -> None:
        """Returns once the model is loaded (raises what loading raised)."""

    def check(self, clip: PlannedClip, audio, source: str) -> ClipCheck:
        return check_sync(clip, audio, self.config, self.checker, source)


@ray.remote
class _QualityStage:
    """Actor holding the quality scorer: each call scores one clip the sync step kept ([`check_quality`])."""

    def __init__(self, config: PrepareConfig, device: str, given=None, spec: str | None = None):
        set_threads(1)
        self.scorer = worker_quality_scorer(config, device, given, spec)

    def ready(self) -> None:
        """Returns once the scorer is loaded (raises what loading raised)."""

    def check(self, clip: PlannedClip, check: ClipCheck) -> ClipCheck:
        return check_quality(clip, check, self.scorer)


class _Pool:
    """The actors of one model stage; each call goes to the actor with the fewest calls waiting."""

    def __init__(self, name: str, actors: list):
        self.name, self.actors, self.waiting = name, actors, [0] * len(actors)

    def check_ready(self) -> None:
        """Wait until every actor has loaded its model; a clear error when one could not."""
        try:
            ray.get([actor.ready.remote() for actor in self.actors])
        except RayError as exc:
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            raise LatentSyncInputError(f"the {self.name} actors could not start on the Ray cluster: "
                                       f"{lines[-1] if lines else type(exc).__name__}") from exc

    def call(self, *args) -> tuple[ray.ObjectRef, int]:
        slot = min(range(len(self.actors)), key=self.waiting.__getitem__)
        self.waiting[slot] += 1
        return self.actors[slot].check.remote(*args), slot

    def done(self, slot: int) -> None:
        self.waiting[slot] -= 1


# ---------------------------------------------------------------------------------------------------- the driver
@dataclasses.dataclass
class _Video:
    """A video in progress: its stream of stage-1 results and the verdicts of its clips so far."""

    job: VideoJob
    stream: ray.ObjectRefGenerator
    started: float
    scan: VideoScan | None = None
    audio: ray.ObjectRef | None = None
    items: int = 0  # items taken from the stream
    streaming: bool = True
    clips: int = 0  # clips taken from the stream
    pending: int = 0  # of those, clips without a verdict yet
    outcomes: dict = dataclasses.field(default_factory=dict)  # clip index -> (ClipCheck, file name or None)
    error: str | None = None
    crashed: bool = False

    @property
    def finished(self) -> bool:
        return not self.streaming and not self.pending


@dataclasses.dataclass
class _Call:
    """A stage call in flight: for which clip, at which stage, and the figures so far."""

    video: _Video
    index: int
    clip: ray.ObjectRef
    stage: str  # sync, quality or write
    check: ClipCheck | None = None
    pool: _Pool | None = None
    slot: int = 0


class _Driver:
    """Schedules the videos' tasks and the clips' stage calls, and assembles each video's record."""

    def __init__(self, config: PrepareConfig, device: str, models: StageModels, max_videos: int | None,
                 actors: int | None):
        resources = ray.cluster_resources()
        check_cluster(device)
        gpu = device.startswith("cuda")
        count = actors or (int(resources.get("GPU", 0)) if gpu else 1)
        # Ray shows each actor only the GPU it was given: "cuda" is that one
        actor_device = "cuda" if gpu else device
        model_gpu = {"num_gpus": GPU_SHARE} if gpu else {}
        self.config = config
        self.scorer_name = scorer_name(models.quality)
        self.sync = None
        if config.sync and models.sync is not None:
            self.sync = _Pool("sync", [_SyncStage.options(**model_gpu).remote(config, actor_device, models.given_sync)
                               for _ in range(count)])
        quality_gpu = {} if isinstance(models.quality, SharpnessScorer) else model_gpu  # sharpness needs no GPU
        self.quality = _Pool("quality", [_QualityStage.options(**quality_gpu).remote(
            config, actor_device, models.given_quality, models.quality_spec) for _ in range(count)])
        self.max_videos = max_videos or max(1, int(resources.get("CPU", 1)))
        self.max_clips = 2 * count * (2 if self.sync else 1) + self.max_videos
        self.calls: dict[ray.ObjectRef, _Call] = {}
        logger.info("Ray: %d videos at a time, %d %s actor(s) per model stage on %s", self.max_videos, count,
                    "sync and quality" if self.sync else "quality", actor_device)

    def run(self, jobs: list[VideoJob]) -> Iterator[tuple[str, dict]]:
        """Yield ``(relpath, record)`` as videos finish (their state files written)."""
        waiting, videos = list(jobs), []
        pools = [pool for pool in (self.sync, self.quality) if pool is not None]
        while waiting or videos:
            while waiting and len(videos) < self.max_videos:
                job = waiting.pop(0)
                stream = _scan_and_align.options(_generator_backpressure_num_objects=AHEAD).remote(
                    job.path, job.relpath, job.clips_dir, self.config)
                videos.append(_Video(job, stream, time.time()))
            while pools:  # once, while the first videos are scanned
                pools.pop().check_ready()
            in_stages = sum(v.pending for v in videos)
            # a failed video's stream is drained whatever the load (its items are dropped)
            streams = [v for v in videos if v.streaming and (v.error or in_stages < self.max_clips)]
            if streams or self.calls:
                ready, _ = ray.wait([v.stream for v in streams] + list(self.calls), num_returns=1, fetch_local=False)
                for item in ready:
                    if isinstance(item, ray.ObjectRef) and item in self.calls:
                        self._stage_done(item)
                    else:
                        self._take(next(v for v in streams if v.stream is item))
            for v in [v for v in videos if v.finished]:
                videos.remove(v)
                yield v.job.relpath, self._finish(v)

    def _take(self, v: _Video) -> None:
        """The next item of a video's stream: its scan, its audio, or a clip (sent to the first stage)."""
        try:
            ref = next(v.stream)
        except StopIteration:
            v.streaming = False
            if v.scan is None and v.error is None:
                v.error = "the scan task ended without a result"
            return
        v.items += 1
        if v.error is not None:
            return
        if v.items == 1:
            try:
                v.scan = ray.get(ref)
            except RayError as exc:
                self._fail(v, exc)
        elif v.items == 2:
            v.audio = ref
        else:
            index, v.clips = v.clips, v.clips + 1
            v.pending += 1
            if self.sync is not None:
                self._submit(_Call(v, index, ref, "sync"), self.sync, ref, v.audio, v.job.relpath)
            else:
                self._submit(_Call(v, index, ref, "quality", ClipCheck()), self.quality, ref, ClipCheck())

    def _submit(self, call: _Call, pool: _Pool | None, *args) -> None:
        """Start ``call``: on an actor of ``pool``, or as a write task (``pool`` None)."""
        if pool is None:
            self.calls[_write.remote(*args)] = call
        else:
            ref, call.slot = pool.call(*args)
            call.pool = pool
            self.calls[ref] = call

    def _stage_done(self, ref: ray.ObjectRef) -> None:
        """A stage call returned: the clip's verdict, or its next stage."""
        call = self.calls.pop(ref)
        if call.pool is not None:
            call.pool.done(call.slot)
        v = call.video
        if v.error is not None:
            v.pending -= 1
            return
        try:
            value = ray.get(ref)
        except RayError as exc:
            v.pending -= 1
            self._fail(v, exc)
            return
        if call.stage == "write":
            v.outcomes[call.index] = (call.check, value)
        elif value.reason is not None:
            v.outcomes[call.index] = (value, None)
        elif call.stage == "sync":
            self._submit(dataclasses.replace(call, stage="quality", check=value), self.quality, call.clip, value)
            return
        else:
            self._submit(dataclasses.replace(call, stage="write", check=value, pool=None), None, call.clip, v.audio,
                         value.offset, v.scan.result["key"], v.job.clips_dir, self.config)
            return
        v.pending -= 1

    def _fail(self, v: _Video, exc: RayError) -> None:
        """A stage raised (the video is recorded as failed) or a worker died (crashed: redone by the next run). A
        full disk (or a folder turned read-only) stops the run, as with the local engine: the video gets no state, so
        the next run redoes it."""
        storage = storage_cause(exc, v.job.clips_dir)
        if storage is not None:
            raise storage from exc
        v.crashed = not isinstance(exc, RayTaskError)
        v.error = str(exc)
        logger.error("%s %s: %s", "worker died on" if v.crashed else "failed on", v.job.relpath,
                     str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)

    def _finish(self, v: _Video) -> dict:
        """The video's record (its clips in plan order), saved as its state file unless a worker died."""
        if v.crashed:
            return failed_record(v.job.relpath, v.error, status="crashed")
        if v.error is not None:
            record = failed_record(v.job.relpath, v.error, path=v.job.path)
        else:
            record = v.scan.result
            for index in sorted(v.outcomes):
                check, file = v.outcomes[index]
                start, end = v.scan.plan[index]
                record_clip(record, index, start, end, check, self.config, self.scorer_name, file)
            record_unreached(record, v.scan.plan or [], v.clips)
        record["seconds_processing"] = round(time.time() - v.started, 2)
        write_json_atomically(v.job.state_path, record, indent=1)
        return record


def run_on_ray(jobs: list[VideoJob], config: PrepareConfig, device: str, models: StageModels,
               max_videos: int | None = None, actors: int | None = None) -> Iterator[tuple[str, dict]]:
    """Process ``jobs`` on the Ray this process has joined (see [`session`]); yields ``(relpath, record)`` as
    videos finish, each one's state file written. ``max_videos``: videos decoded at once (default: the cluster's
    CPUs); ``actors``: actors per model stage (default: one per GPU of the cluster with ``device="cuda"``, else 1)."""
    yield from _Driver(config, device, models, max_videos, actors).run(jobs)


@contextlib.contextmanager
def session(address: str | None = None) -> Iterator[None]:
    """Ray for the run: the Ray this process already joined, else the cluster at ``address`` or ``RAY_ADDRESS``
    (``auto``: the one ``ray start`` runs on this node; ``HOST:6379``; ``ray://HOST:10001``), else a new Ray on this
    machine (never a cluster that an earlier ``ray start`` left behind). What this call joined or started it leaves
    again at the end."""
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_address(address)
    try:
        ray.init(address=address or "local")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = first_line(exc)
        where = f"the Ray cluster at {address}" if address else "Ray on this machine"
        hint = ""
        if address and address != "local" and not os.environ.get("RAY_AUTH_MODE"):
            # Ray 2.59-2.60: `ray start` turns token authentication on, ray.init joins without a token
            hint = "; a cluster started with `ray start` may need RAY_AUTH_MODE=token here (and its token file)"
        raise LatentSyncInputError(f"cannot start or join {where}: {first}{hint}") from exc
    try:
        yield
    finally:
        ray.shutdown()


def check_cluster(device: str) -> None:
    """The joined cluster can run the model stages on ``device`` (a CUDA device needs GPUs in the cluster)."""
    if device.startswith("cuda") and not ray.cluster_resources().get("GPU"):
        raise LatentSyncInputError(f"--device {device}: the Ray cluster has no GPU (`ray status` lists what it has); "
                                   "use --device cpu or add GPU nodes")


def check_address(address: str | None, timeout: float = 10.0) -> None:
    """Fail at once, with a clear error, when the head node of the cluster at ``address`` does not answer:
    ``ray.init`` would wait minutes for it. ``auto``, ``local`` and no address are left to Ray."""
    if address in (None, "", "auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise LatentSyncInputError(f"--address {address!r}: give HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise LatentSyncInputError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is `ray start "
                                   f"--head` running there, and is the port open?)") from None
