"""`latentsync prepare`: raw talking-head videos -> a Hugging Face ``datasets`` training set (spec section 8).

Per source video (one worker process each):

1. probe; unreadable files, files without audio and silent files are dropped;
2. decode at 25 fps (ffmpeg ``fps`` filter) and the audio at 16 kHz mono;
3. pass 1: scene cuts (PySceneDetect's adaptive content detector on small frames) and the three face anchors of
   every frame (MediaPipe; the face tracker restarts at every cut);
4. plan clips: runs of frames that have a face, inside one scene, cut into equal pieces of ``min_seconds`` to
   ``max_seconds``; shorter runs are dropped;
5. pass 2: align every planned frame to the LatentSync template at ``resolution`` (anchors Gaussian-smoothed within
   the clip);
6. SyncNet: estimate the audio-visual offset and its confidence; drop clips whose confidence is low or whose
   offset is beyond ``max_sync_offset``, re-cut the audio of the others so that it is in sync;
7. visual quality (hyperIQA when its weights are available, the sharpness of the face otherwise): drop low scores;
8. write each kept clip as an H.264 + AAC mp4.

Each video's result is written to ``<output>/work/state/<key>.json`` once the video is finished, so a run that
stops midway redoes only the unfinished videos. At the end all clips go into one ``datasets.Dataset`` saved in
shards under ``<output>/dataset`` (load with ``datasets.load_from_disk``; ``push_prepared`` uploads it), and
``summary.json`` / ``summary.md`` list what was kept and what was dropped and why.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm.auto import tqdm

from .. import audio as audio_lib
from ..errors import InvalidAudioError, InvalidVideoError, LatentSyncInputError

logger = logging.getLogger(__name__)

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts")
SCENE_DETECT_WIDTH = 320

# Why material was dropped. Video-level reasons drop the whole file, clip-level ones a planned clip, frame-level
# ones frames that never became part of a clip.
DROP_REASONS = {
    "unreadable": "file cannot be decoded or has no video stream",
    "no_audio": "no audio stream, or video frames past the end of the audio",
    "silent_audio": "audio track is silent",
    "error": "unexpected error while processing (see the state file)",
    "no_face": "frames without a detected face",
    "too_short": "face runs / scenes shorter than min_seconds",
    "sync_offset": "audio-visual offset beyond max_sync_offset",
    "low_sync_confidence": "SyncNet confidence below min_sync_confidence",
    "sync_failed": "SyncNet could not score the clip (shorter than its window)",
    "low_quality": "visual quality below the scorer's threshold",
}


@dataclass
class PrepareConfig:
    """Settings of a data preparation run (all but the worker count are part of the output's identity).

    Args:
        resolution: side of the aligned faces (256 for LatentSync 1.5, 512 for 1.6).
        min_seconds / max_seconds: clip length range (official 5-10 s).
        scene_threshold: PySceneDetect adaptive threshold (official ``detect-adaptive --threshold 2``).
        landmark_smoothing: Gaussian sigma (frames) applied to the face anchors within a clip; 0 disables.
        sync: estimate and correct the A/V offset with SyncNet and drop badly synced clips.
        syncnet: SyncNet for the sync step: a classic ``syncnet_v2.model`` file, a StableSyncNet folder / Hub id,
            or an official ``stable_syncnet.pt`` (None: ``auxiliary/syncnet_v2.model`` of ByteDance/LatentSync-1.5).
        syncnet_weights_name: file inside the ``syncnet`` folder / Hub repository to load.
        min_sync_confidence / max_sync_offset: keep a clip when its confidence is at least this and the absolute
            offset (frames) at most this (official 3 and 6 with the classic SyncNet). None: 3 for the classic
            SyncNet, 0.2 for a StableSyncNet (its cosine-distance confidences are on a smaller scale; this default
            is not calibrated on the released model, check the ``sync_confidence`` column of your data).
        quality: visual-quality scorer: ``auto``, ``sharpness``, ``hyperiqa``, ``hyperiqa:<repo or path>`` or a
            path to ``koniq_pretrained.pkl`` (see [`load_quality_scorer`]).
        quality_threshold: minimum score (default: the scorer's own, hyperIQA 40).
        crf: x264 quality of the written clips (official 13).
        max_shard_size: size of the dataset's shards.
    """

    resolution: int = 256
    min_seconds: float = 5.0
    max_seconds: float = 10.0
    scene_threshold: float = 2.0
    landmark_smoothing: float = 1.5
    sync: bool = True
    syncnet: str | None = None
    syncnet_weights_name: str | None = None
    min_sync_confidence: float | None = None
    max_sync_offset: int = 6
    quality: str = "auto"
    quality_threshold: float | None = None
    crf: int = 13
    max_shard_size: str = "500MB"

    def __post_init__(self):
        if self.resolution not in (256, 512):
            raise LatentSyncInputError(f"resolution must be 256 or 512, got {self.resolution}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise LatentSyncInputError(
                f"need 0 < min_seconds <= max_seconds, got {self.min_seconds} and {self.max_seconds}")

    @property
    def min_frames(self) -> int:
        return max(1, int(round(self.min_seconds * FPS)))

    @property
    def max_frames(self) -> int:
        return max(self.min_frames, int(round(self.max_seconds * FPS)))

    def identity(self) -> dict:
        """Settings that change the output (compared on resume)."""
        d = dataclasses.asdict(self)
        d.pop("max_shard_size")
        return d


@dataclass
class PrepareSummary:
    """What a run kept and dropped. ``dropped`` maps a reason to ``{"count": items, "seconds": duration}``."""

    videos: int = 0
    videos_done: int = 0
    videos_failed: int = 0
    clips: int = 0
    clip_seconds: float = 0.0
    source_seconds: float = 0.0
    dropped: dict = field(default_factory=dict)
    dataset_path: str | None = None
    elapsed_seconds: float = 0.0

    def table(self) -> str:
        """Markdown table of kept and dropped material."""
        rows = [f"| kept clips | {self.clips} | {self.clip_seconds:.1f} |"]
        for reason, d in sorted(self.dropped.items(), key=lambda kv: -kv[1]["seconds"]):
            rows.append(f"| dropped: {reason} ({DROP_REASONS.get(reason, '')}) | {d['count']} | {d['seconds']:.1f} |")
        head = (f"{self.videos} source videos ({self.source_seconds:.1f} s at 25 fps), {self.videos_done} processed, "
                f"{self.videos_failed} dropped whole\n\n| | count | seconds |\n|---|---:|---:|")
        return "\n".join([head, *rows])


# ----------------------------------------------------------------------------------------------- planning


def plan_clips(has_face: np.ndarray, cuts: Sequence[int], min_frames: int, max_frames: int
               ) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """Cut a video into clips.

    Args:
        has_face: per-frame flag ``(N,)``.
        cuts: frame indices where a new scene starts.
        min_frames / max_frames: clip length range.

    Returns:
        ``[(start, end), ...]`` frame ranges (end exclusive) and the number of frames dropped per reason
        (``no_face``, ``too_short``). Every run of face frames inside a scene gives ``ceil(len / max_frames)`` equal
        clips when that keeps them at least ``min_frames`` long, else as many ``max_frames`` clips as fit.
    """
    has_face = np.asarray(has_face, dtype=bool)
    n = len(has_face)
    bounds = sorted({0, n, *[c for c in cuts if 0 < c < n]})
    clips: list[tuple[int, int]] = []
    dropped = {"no_face": int((~has_face).sum()), "too_short": 0}
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        i = s0
        while i < s1:
            if not has_face[i]:
                i += 1
                continue
            j = i
            while j < s1 and has_face[j]:
                j += 1
            length = j - i
            if length < min_frames:
                dropped["too_short"] += length
            else:
                pieces = -(-length // max_frames)
                if length // pieces >= min_frames:
                    edges = np.linspace(i, j, pieces + 1).round().astype(int)
                    clips.extend((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))
                else:
                    pieces = length // max_frames
                    clips.extend((i + k * max_frames, i + (k + 1) * max_frames) for k in range(pieces))
                    dropped["too_short"] += length - pieces * max_frames
            i = j
    return clips, dropped


def shifted_audio(audio: np.ndarray, start: int, end: int, offset: int) -> np.ndarray:
    """Audio of video frames ``[start, end)`` taken ``offset`` frames later in the track (zero-padded at the ends),
    i.e. the sound that belongs to frame ``k`` is heard ``offset`` frames after it in ``audio``."""
    a, b = (start + offset) * SAMPLES_PER_FRAME, (end + offset) * SAMPLES_PER_FRAME
    out = np.zeros(b - a, dtype=np.float32)
    lo, hi = max(a, 0), min(b, len(audio))
    if hi > lo:
        out[lo - a : hi - a] = audio[lo:hi]
    return out


def video_key(relpath: str) -> str:
    """Stable file-system-safe key of a source video (its name plus a hash of its relative path)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.basename(relpath))[0])[:60] or "video"
    return f"{stem}-{hashlib.sha1(relpath.encode()).hexdigest()[:8]}"


def find_videos(input_dir: str) -> list[str]:
    """Video files under ``input_dir`` (recursive, sorted), as paths relative to it."""
    if not os.path.isdir(input_dir):
        raise LatentSyncInputError(f"input folder not found: {input_dir}")
    found = []
    for root, dirs, files in os.walk(input_dir):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith("."):
                found.append(os.path.relpath(os.path.join(root, name), input_dir))
    return sorted(found)


# ----------------------------------------------------------------------------------------------- per-worker models

SyncChecker = Callable[[Sequence[np.ndarray], np.ndarray, int], tuple[int, float]]

_WORKER: dict = {}


class SyncNetChecker:
    """A/V offset and confidence of an aligned clip with a SyncNet (classic v2 or StableSyncNet).

    ``checker(faces, audio, start_frame) -> (offset, confidence)``: ``faces`` are the clip's aligned RGB frames,
    ``audio`` the whole 16 kHz track of the source and ``start_frame`` the clip's first frame in it. The clip's own
    audio is scored (as the official pipeline scores its segment files); ``offset`` follows [`shifted_audio`]:
    the clip's sound is ``offset`` frames late in the source track.
    """

    def __init__(self, model, vshift: int = 15, batch_size: int = 16):
        from ..models.syncnet import StableSyncNet

        self.model, self.vshift, self.batch_size = model, vshift, batch_size
        self.default_min_confidence = 0.2 if isinstance(model, StableSyncNet) else 3.0

    def __call__(self, faces: Sequence[np.ndarray], audio: np.ndarray, start_frame: int) -> tuple[int, float]:
        from ..eval import sync_confidence as sc
        from ..models.syncnet import StableSyncNet

        n = len(faces)
        segment = audio[start_frame * SAMPLES_PER_FRAME : (start_frame + n) * SAMPLES_PER_FRAME]
        if isinstance(self.model, StableSyncNet):
            res = int(self.model.config.resolution)
            mouths = np.stack([f if f.shape[:2] == (res, res)
                               else cv2.resize(f, (res, res), interpolation=cv2.INTER_AREA) for f in faces])
            if self.model.config.lower_half:
                mouths = mouths[:, res // 2 :]
            vis, aud = sc.stable_features(self.model, mouths, sc.wav2lip_mel(segment), self.batch_size)
            metric = "cosine"
        else:
            crops = np.stack([cv2.resize(np.ascontiguousarray(f[..., ::-1]), (sc.CLASSIC_CROP, sc.CLASSIC_CROP))
                              for f in faces])
            vis, aud = sc.classic_features(self.model, crops, sc.classic_mfcc(segment), self.batch_size)
            metric = "euclidean"
        est = sc.offset_confidence(vis, aud, self.vshift, metric)
        # estimate_sync reports where the audio matching frame i lies as i - offset; ours is i + offset.
        return -int(est.offset), float(est.confidence)


def load_sync_checker(config: "PrepareConfig", device: str = "cpu") -> SyncNetChecker:
    """[`SyncNetChecker`] with the network named by ``config.syncnet`` (default: the classic ``syncnet_v2.model``
    of the official LatentSync Hub repository, which the official thresholds 3 / 6 refer to)."""
    from ..eval.sync_confidence import OFFICIAL_SYNCNET_V2_FILE, OFFICIAL_SYNCNET_V2_REPO, load_sync_model

    if config.syncnet is None:
        model = load_sync_model(OFFICIAL_SYNCNET_V2_REPO, weights_name=OFFICIAL_SYNCNET_V2_FILE, device=device)
    else:
        model = load_sync_model(config.syncnet, weights_name=config.syncnet_weights_name, device=device)
    return SyncNetChecker(model)


def _init_worker(config: PrepareConfig, device: str, sync_checker, quality_scorer, threads: int,
                 quality_spec: str | None = None) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    cv2.setNumThreads(max(1, threads))
    from .quality import load_quality_scorer

    _WORKER["config"] = config
    _WORKER["sync"] = sync_checker if sync_checker is not None else (
        load_sync_checker(config, device) if config.sync else None)
    _WORKER["quality"] = quality_scorer if quality_scorer is not None else load_quality_scorer(
        quality_spec or config.quality, config.quality_threshold, device=device)


def _load_models(config: PrepareConfig, device: str, sync_checker, quality_scorer):
    """Load (and so validate, downloading weights once) the SyncNet and the quality scorer before any work starts."""
    from .quality import SharpnessScorer, load_quality_scorer

    if sync_checker is None and config.sync:
        try:
            sync_checker = load_sync_checker(config, device)
        except Exception as exc:  # noqa: BLE001 - turned into one clear message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LatentSyncInputError(
                f"cannot load the SyncNet for the sync step ({first}); pass --syncnet <syncnet_v2.model file, "
                "StableSyncNet folder or Hub id> or --no-sync") from exc
    if quality_scorer is None:
        try:
            quality_scorer = load_quality_scorer(config.quality, config.quality_threshold, device=device)
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LatentSyncInputError(f"cannot load the quality scorer {config.quality!r}: {first}") from exc
    # workers load their own copies; "auto" that fell back is passed on as "sharpness" (no second attempt)
    spec = "sharpness" if config.quality == "auto" and isinstance(quality_scorer, SharpnessScorer) else None
    return sync_checker, quality_scorer, spec


# ----------------------------------------------------------------------------------------------- one video


def _drop(result: dict, reason: str, frames: int = 0, count: int = 1) -> None:
    d = result["dropped"].setdefault(reason, {"count": 0, "seconds": 0.0})
    d["count"] += count
    d["seconds"] += frames / FPS


def _scan(path: str, config: PrepareConfig) -> tuple[np.ndarray, list[int]]:
    """Pass 1: face anchors ``(N, 3, 2)`` (NaN without a face) and scene-cut frame indices."""
    from scenedetect import AdaptiveDetector
    from scenedetect.common import FrameTimecode

    from ..face_detection import FaceDetector
    from ..video_io import iter_frames

    scene = AdaptiveDetector(adaptive_threshold=config.scene_threshold)
    detector = FaceDetector()
    anchors: list[np.ndarray | None] = []
    cuts: list[int] = []
    recent: list[tuple[int, np.ndarray]] = []  # last frames, to redo face tracking after a late-reported cut
    keep = 2 * getattr(scene, "window_width", 2) + 4
    try:
        for i, frame in enumerate(iter_frames(path, fps=FPS)):
            h, w = frame.shape[:2]
            small = cv2.resize(frame, (SCENE_DETECT_WIDTH, max(2, round(h * SCENE_DETECT_WIDTH / w))),
                               interpolation=cv2.INTER_AREA)
            anchors.append(detector.anchors(frame))
            recent = (recent + [(i, frame)])[-keep:]
            for tc in scene.process_frame(FrameTimecode(i, float(FPS)), cv2.cvtColor(small, cv2.COLOR_RGB2BGR)):
                cut = int(tc.frame_num)
                cuts.append(cut)
                detector.close()
                detector = FaceDetector()  # a new scene: choose the face again
                for k, f in recent:
                    if k >= cut:
                        anchors[k] = detector.anchors(f)
    finally:
        detector.close()
    out = np.full((len(anchors), 3, 2), np.nan)
    for i, a in enumerate(anchors):
        if a is not None:
            out[i] = a
    return out, cuts


def process_video(path: str, relpath: str, clips_dir: str, config: PrepareConfig,
                  sync_checker: SyncChecker | None = None, quality_scorer=None) -> dict:
    """Turn one source video into clips under ``clips_dir``; return its result record (clips + drops)."""
    from ..alignment import FaceAligner, smooth_anchors
    from ..video_io import iter_frames, probe_video

    key = video_key(relpath)
    result = {"source": relpath, "key": key, "status": "done", "frames": 0, "clips": [], "dropped": {}}
    sync_checker = sync_checker if sync_checker is not None else _WORKER.get("sync")
    quality_scorer = quality_scorer if quality_scorer is not None else _WORKER.get("quality")
    try:
        info = probe_video(path)
    except InvalidVideoError as exc:
        result.update(status="dropped", error=str(exc))
        _drop(result, "unreadable")
        return result
    if not info.has_audio:
        result.update(status="dropped", error="no audio stream")
        _drop(result, "no_audio", int(info.duration * FPS))
        return result
    try:
        audio = audio_lib.load_audio(path, SAMPLE_RATE)
        audio_lib.check_not_silent(audio, path)
    except InvalidAudioError as exc:
        result.update(status="dropped", error=str(exc))
        _drop(result, "silent_audio" if "silent" in str(exc) else "no_audio", int(info.duration * FPS))
        return result
    try:
        anchors, cuts = _scan(path, config)
    except InvalidVideoError as exc:
        result.update(status="dropped", error=str(exc))
        _drop(result, "unreadable", int(info.duration * FPS))
        return result
    n = len(anchors)
    result["frames"] = n
    has_face = ~np.isnan(anchors[:, 0, 0])
    with_audio = min(n, len(audio) // SAMPLES_PER_FRAME)
    if with_audio < n:  # frames past the end of the audio track cannot be used
        _drop(result, "no_audio", n - with_audio, count=0)
    plan, frame_drops = plan_clips(has_face[:with_audio], cuts, config.min_frames, config.max_frames)
    for reason, frames in frame_drops.items():
        if frames:
            _drop(result, reason, frames, count=0)
    result["scene_cuts"] = [int(c) for c in cuts]
    if not plan:
        return result

    os.makedirs(clips_dir, exist_ok=True)
    aligner = FaceAligner(config.resolution)
    smoothed = np.full_like(anchors, np.nan)
    for s, e in plan:
        smoothed[s:e] = smooth_anchors(anchors[s:e], config.landmark_smoothing)
    starts = {s: (k, e) for k, (s, e) in enumerate(plan)}
    current: tuple[int, int, int] | None = None
    faces: list[np.ndarray] = []
    for i, frame in enumerate(iter_frames(path, fps=FPS)):
        if current is None and i in starts:
            k, e = starts[i]
            current, faces = (k, i, e), []
        if current is None:
            continue
        faces.append(aligner.align(frame, aligner.matrix(smoothed[i])))
        k, s, e = current
        if i == e - 1:
            _finish_clip(result, k, s, e, faces, audio, clips_dir, config, sync_checker, quality_scorer)
            current, faces = None, []
        if i >= plan[-1][1]:
            break
    if current is not None:  # the second decode ended early (should not happen)
        k, s, e = current
        _drop(result, "unreadable", e - s)
    return result


def _finish_clip(result: dict, k: int, s: int, e: int, faces: list[np.ndarray], audio: np.ndarray, clips_dir: str,
                 config: PrepareConfig, sync_checker, quality_scorer) -> None:
    from ..video_io import VideoWriter

    offset, confidence = 0, float("nan")
    if config.sync and sync_checker is not None:
        try:
            offset, confidence = sync_checker(faces, audio, s)
        except LatentSyncInputError as exc:
            logger.warning("%s frames %d-%d: %s", result["source"], s, e, exc)
            _drop(result, "sync_failed", e - s)
            return
        offset = int(offset)
        if abs(offset) > config.max_sync_offset:
            _drop(result, "sync_offset", e - s)
            return
        threshold = config.min_sync_confidence
        if threshold is None:
            threshold = getattr(sync_checker, "default_min_confidence", 3.0)
        if not confidence >= threshold:
            _drop(result, "low_sync_confidence", e - s)
            return
    score = float(quality_scorer(faces)) if quality_scorer is not None else float("nan")
    if quality_scorer is not None and not score >= quality_scorer.threshold:
        _drop(result, "low_quality", e - s)
        return
    clip_id = f"{result['key']}_{k:04d}"
    clip_path = os.path.join(clips_dir, clip_id + ".mp4")
    clip_audio = shifted_audio(audio, s, e, offset)
    with tempfile.TemporaryDirectory(prefix="latentsync-prepare-") as tmp:
        wav = os.path.join(tmp, "audio.wav")
        _write_wav(wav, clip_audio)
        with VideoWriter(clip_path, fps=FPS, audio_path=wav, crf=config.crf) as writer:
            for face in faces:
                writer.write(face)
    result["clips"].append({
        "id": clip_id,
        "file": os.path.basename(clip_path),
        "source": result["source"],
        "start": s / FPS,
        "end": e / FPS,
        "num_frames": e - s,
        "sync_offset": offset,
        "sync_confidence": confidence,
        "quality_score": score,
        "quality_scorer": getattr(quality_scorer, "name", "none"),
    })


def _write_wav(path: str, audio: np.ndarray) -> None:
    from scipy.io import wavfile

    wavfile.write(path, SAMPLE_RATE, (np.clip(audio, -1, 1) * 32767).astype(np.int16))


def _worker_job(path: str, relpath: str, clips_dir: str, state_path: str) -> dict:
    """Process one video in a worker and persist its state atomically (the resume marker)."""
    config = _WORKER["config"]
    t0 = time.time()
    if os.path.isdir(clips_dir):
        shutil.rmtree(clips_dir)  # leftovers of an interrupted run
    try:
        result = process_video(path, relpath, clips_dir, config)
    except Exception as exc:  # noqa: BLE001 - recorded per video so one bad file does not stop the run
        logger.error("failed on %s: %s", relpath, exc)
        result = {"source": relpath, "key": video_key(relpath), "status": "failed", "frames": 0, "clips": [],
                  "dropped": {"error": {"count": 1, "seconds": 0.0}}, "error": traceback.format_exc(limit=8)}
    result["seconds_processing"] = round(time.time() - t0, 2)
    _atomic_json(state_path, result)
    return result


def _atomic_json(path: str, data) -> None:
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- the run


def prepare_dataset(
    input_dir: str,
    output_dir: str,
    config: PrepareConfig | None = None,
    num_workers: int = 1,
    device: str = "cpu",
    retry_failed: bool = False,
    overwrite: bool = False,
    sync_checker: SyncChecker | None = None,
    quality_scorer=None,
    build_dataset: bool = True,
) -> PrepareSummary:
    """Prepare every video under ``input_dir`` into ``output_dir`` (resumable; see the module docstring).

    Args:
        num_workers: parallel processes (1 runs in this process).
        device: torch device for SyncNet and the quality model.
        retry_failed: redo videos whose previous attempt raised an unexpected error.
        overwrite: start from scratch when ``output_dir`` holds a run with other settings.
        sync_checker / quality_scorer: use these instead of loading them from the config (tests, custom models;
            they must be picklable when ``num_workers > 1``).
        build_dataset: write the ``datasets`` shards at the end.
    """
    config = config or PrepareConfig()
    t0 = time.time()
    work = os.path.join(output_dir, "work")
    state_dir, clips_root = os.path.join(work, "state"), os.path.join(work, "clips")
    config_path = os.path.join(output_dir, "prepare_config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        if previous != config.identity():
            if not overwrite:
                raise LatentSyncInputError(
                    f"{output_dir} was prepared with other settings ({_diff(previous, config.identity())}); "
                    "use another output folder or --overwrite")
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(os.path.join(output_dir, "dataset"), ignore_errors=True)
    os.makedirs(state_dir, exist_ok=True)
    os.makedirs(clips_root, exist_ok=True)
    _atomic_json(config_path, config.identity())

    videos = find_videos(input_dir)
    if not videos:
        raise LatentSyncInputError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {input_dir}")
    jobs, results = [], {}
    for rel in videos:
        key = video_key(rel)
        state_path = os.path.join(state_dir, key + ".json")
        if os.path.isfile(state_path):
            with open(state_path) as f:
                previous = json.load(f)
            if not (retry_failed and previous.get("status") == "failed"):
                results[rel] = previous
                continue
        jobs.append((os.path.join(input_dir, rel), rel, os.path.join(clips_root, key), state_path))
    logger.info("%d videos: %d already done, %d to process with %d worker(s)", len(videos), len(results), len(jobs),
                num_workers)

    threads = max(1, (os.cpu_count() or 1) // max(1, num_workers))
    kept = sum(len(r["clips"]) for r in results.values())
    custom_sync, custom_quality = sync_checker, quality_scorer
    quality_spec = None
    if jobs:
        sync_checker, quality_scorer, quality_spec = _load_models(config, device, sync_checker, quality_scorer)
    bar = tqdm(total=len(jobs), desc="prepare", unit="video")
    bar.set_postfix(clips=kept)
    if jobs and num_workers <= 1:
        saved = dict(_WORKER)
        _init_worker(config, device, sync_checker, quality_scorer, threads=os.cpu_count() or 1)
        try:
            for job in jobs:
                res = _worker_job(*job)
                results[job[1]] = res
                kept += len(res["clips"])
                bar.update(1)
                bar.set_postfix(clips=kept)
        finally:
            _WORKER.clear()
            _WORKER.update(saved)
    elif jobs:
        ctx = multiprocessing.get_context("spawn")  # MediaPipe and torch are not fork-safe
        del sync_checker, quality_scorer  # each worker loads its own (only caller-given objects are sent)
        with cf.ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_init_worker,
                                    initargs=(config, device, custom_sync, custom_quality, threads,
                                              quality_spec)) as pool:
            futures = {pool.submit(_worker_job, *job): job for job in jobs}
            for fut in cf.as_completed(futures):
                job = futures[fut]
                try:
                    res = fut.result()
                except Exception as exc:  # noqa: BLE001 - a crashed worker leaves no state: the video is redone next run
                    logger.error("worker crashed on %s: %s", job[1], exc)
                    res = {"source": job[1], "status": "crashed", "frames": 0, "clips": [],
                           "dropped": {"error": {"count": 1, "seconds": 0.0}}}
                results[job[1]] = res
                kept += len(res["clips"])
                bar.update(1)
                bar.set_postfix(clips=kept)
    bar.close()

    summary = _summarise(videos, results)
    if build_dataset:
        summary.dataset_path = build_prepared_dataset(output_dir, [results[v] for v in videos], config)
    summary.elapsed_seconds = round(time.time() - t0, 1)
    _atomic_json(os.path.join(output_dir, "summary.json"), dataclasses.asdict(summary))
    with open(os.path.join(output_dir, "summary.md"), "w") as f:
        f.write(summary.table() + "\n")
    logger.info("data preparation summary:\n%s", summary.table())
    return summary


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
        for reason, d in r.get("dropped", {}).items():
            agg = s.dropped.setdefault(reason, {"count": 0, "seconds": 0.0})
            agg["count"] += d["count"]
            agg["seconds"] = round(agg["seconds"] + d["seconds"], 2)
    s.clip_seconds = round(s.clip_seconds, 2)
    s.source_seconds = round(s.source_seconds, 2)
    return s


# ----------------------------------------------------------------------------------------------- dataset


def dataset_features(resolution: int | None = None):
    """Columns of a prepared dataset: the clip as mp4 bytes (H.264 + AAC, 25 fps, aligned faces) and metadata."""
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"),
        "video": datasets.Value("binary"),
        "source": datasets.Value("string"),
        "start": datasets.Value("float32"),
        "end": datasets.Value("float32"),
        "num_frames": datasets.Value("int32"),
        "fps": datasets.Value("float32"),
        "resolution": datasets.Value("int32"),
        "sync_offset": datasets.Value("int32"),
        "sync_confidence": datasets.Value("float32"),
        "quality_score": datasets.Value("float32"),
        "quality_scorer": datasets.Value("string"),
    })


def _rows(records: list[dict], clips_root: str, resolution: int):
    for rec in records:
        for c in rec["clips"]:
            with open(os.path.join(clips_root, rec["key"], c["file"]), "rb") as f:
                data = f.read()
            yield {
                "id": c["id"], "video": data, "source": c["source"], "start": c["start"], "end": c["end"],
                "num_frames": c["num_frames"], "fps": float(FPS), "resolution": resolution,
                "sync_offset": c["sync_offset"], "sync_confidence": c["sync_confidence"],
                "quality_score": c["quality_score"], "quality_scorer": c["quality_scorer"],
            }


def build_prepared_dataset(output_dir: str, records: list[dict], config: PrepareConfig) -> str:
    """Write all clips of ``records`` as a sharded ``datasets.Dataset`` to ``<output_dir>/dataset``."""
    import datasets

    clips_root = os.path.join(output_dir, "work", "clips")
    target = os.path.join(output_dir, "dataset")
    cache = os.path.join(output_dir, "work", "hf_cache")
    shutil.rmtree(cache, ignore_errors=True)
    features = dataset_features()
    records = [r for r in records if r.get("clips")]
    if records:
        ds = datasets.Dataset.from_generator(
            _rows, features=features, cache_dir=cache,
            gen_kwargs={"records": records, "clips_root": clips_root, "resolution": config.resolution},
        )
    else:
        ds = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    if len(ds):
        ds.save_to_disk(tmp, max_shard_size=config.max_shard_size)
    else:
        ds.save_to_disk(tmp, num_shards=1)
    del ds
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    shutil.rmtree(cache, ignore_errors=True)
    return target


def load_prepared(output_dir: str):
    """The ``datasets.Dataset`` written by [`prepare_dataset`] (``output_dir`` or its ``dataset`` folder)."""
    import datasets

    path = os.path.join(output_dir, "dataset") if os.path.isdir(os.path.join(output_dir, "dataset")) else output_dir
    return datasets.load_from_disk(path)


def push_prepared(output_dir: str, repo_id: str, private: bool | None = None, max_shard_size: str = "500MB",
                  token: str | None = None):
    """Upload a prepared dataset to the Hub with ``Dataset.push_to_hub`` (parquet shards)."""
    return load_prepared(output_dir).push_to_hub(repo_id, private=private, max_shard_size=max_shard_size,
                                                 token=token)


def decode_clip(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(T, H, W, 3)`` uint8 and 16 kHz mono audio of a clip stored as mp4 bytes."""
    from ..video_io import iter_frames

    with tempfile.TemporaryDirectory(prefix="latentsync-clip-") as tmp:
        path = os.path.join(tmp, "clip.mp4")
        with open(path, "wb") as f:
            f.write(data)
        frames = np.stack(list(iter_frames(path, fps=None)))
        audio = audio_lib.load_audio(path, SAMPLE_RATE)
    return frames, audio


# ----------------------------------------------------------------------------------------------- CLI


def _parser():
    import argparse

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
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--device", default="cpu", help="device of SyncNet / hyperIQA (default cpu)")
    p.add_argument("--max-shard-size", default=d.max_shard_size)
    p.add_argument("--retry-failed", action="store_true", help="redo videos that failed with an error")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run with other settings")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the dataset to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    return p


def main(argv: list[str]) -> int:
    """``latentsync prepare INPUT OUTPUT [options]``."""
    args = _parser().parse_args(argv)
    config = PrepareConfig(
        resolution=args.resolution, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
        scene_threshold=args.scene_threshold, sync=not args.no_sync, syncnet=args.syncnet,
        syncnet_weights_name=args.syncnet_weights_name, min_sync_confidence=args.min_sync_confidence,
        max_sync_offset=args.max_sync_offset, quality=args.quality, quality_threshold=args.quality_threshold,
        max_shard_size=args.max_shard_size,
    )
    summary = prepare_dataset(args.input, args.output, config, num_workers=args.workers, device=args.device,
                              retry_failed=args.retry_failed, overwrite=args.overwrite)
    if args.push_to_hub:
        push_prepared(args.output, args.push_to_hub, private=args.private or None, max_shard_size=args.max_shard_size)
        logger.info("pushed %d clips to https://huggingface.co/datasets/%s", summary.clips, args.push_to_hub)
    return 0
