"""One source video, in stages that both engines run: the local process pool calls them one after the other in a
worker ([`process_video`]); the Ray engine runs the CPU stages as tasks and the model stages on actor pools.

* [`scan_video`] (CPU): probe, decode the audio, scene cuts and face anchors of every frame, the clip plan;
* [`aligned_clips`] (CPU): the planned clips' frames aligned to the template, one clip at a time;
* [`check_sync`] (model: SyncNet) and [`check_quality`] (model: hyperIQA, or the weight-free sharpness): whether a
  clip is kept, and its offset, confidence and score;
* [`write_clip`] (CPU): the kept clip as an H.264 + AAC mp4 with its audio re-cut by the offset;
* [`record_clip`]: the clip's line in the video's record (kept, or dropped with the figures that decided).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace

import cv2
import numpy as np

from ...errors import InvalidAudioError, InvalidVideoError, LatentSyncInputError
from ...face.alignment import FaceAligner, smooth_anchors
from ...face.detection import FaceDetector
from ...media.audio import check_not_silent, load_audio, speech_track, write_wav
from ...media.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
from ...media.constants import VIDEO_FPS as FPS
from ...media.video import VideoWriter, iter_frames, probe_video
from .config import PrepareConfig
from .planning import plan_clips, shifted_audio, source_text, video_key
from .sync import SyncChecker

logger = logging.getLogger(__name__)

SCENE_DETECT_WIDTH = 320


@dataclass
class VideoScan:
    """What the first pass over a video found: its record so far (``status``, ``frames``, ``dropped``,
    ``scene_cuts``; see [`process_video`]), the 16 kHz audio, the planned clips ``[(start, end), ...]`` (frames, end
    exclusive) and the face anchors ``(N, 3, 2)`` smoothed within each planned clip (NaN elsewhere)."""

    result: dict
    audio: np.ndarray | None = None
    plan: list[tuple[int, int]] | None = None
    anchors: np.ndarray | None = None


@dataclass
class PlannedClip:
    """Planned clip number ``index`` of a video: frames ``start .. end - 1`` aligned to the template."""

    index: int
    start: int
    end: int
    faces: list[np.ndarray]


@dataclass
class ClipCheck:
    """The sync and quality figures of a clip and the verdict: ``reason`` is the drop reason, None when kept.

    ``offset`` / ``confidence`` are None when SyncNet could not score the clip; ``confidence`` and ``score`` are NaN
    for a step that did not run."""

    offset: int | None = 0
    confidence: float | None = float("nan")
    score: float = float("nan")
    reason: str | None = None


def _drop(result: dict, reason: str, frames: int = 0, count: int = 1) -> None:
    d = result["dropped"].setdefault(reason, {"count": 0, "seconds": 0.0})
    d["count"] += count
    d["seconds"] += frames / FPS


def _drop_video(result: dict, reason: str, error: str, frames: int = 0) -> None:
    """Drop a whole source video of ``frames`` frames (its length counts in the summary's source seconds, as in
    the reason's seconds)."""
    result.update(status="dropped", error=error, frames=frames)
    _drop(result, reason, frames)


def _drop_clip(result: dict, reason: str, s: int, e: int, offset: int | None = None,
               confidence: float | None = None, quality: float | None = None) -> None:
    """Drop planned clip ``[s, e)`` and record it with the figures that decided (``dropped_clips`` of the state)."""
    _drop(result, reason, e - s)
    result.setdefault("dropped_clips", []).append({
        "start": s / FPS, "end": e / FPS, "num_frames": e - s, "reason": reason, "sync_offset": offset,
        "sync_confidence": confidence if confidence is None or np.isfinite(confidence) else None,
        "quality_score": quality,
    })


def _scan(path: str, config: PrepareConfig) -> tuple[np.ndarray, list[int]]:
    """Pass 1: face anchors ``(N, 3, 2)`` (NaN without a face) and scene-cut frame indices."""
    from scenedetect import AdaptiveDetector  # deferred: scenedetect is optional (data extra), only prepare uses it
    from scenedetect.common import FrameTimecode  # deferred: see above

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


def sync_threshold(config: PrepareConfig, sync_checker) -> float:
    """The minimum sync confidence: the configured one, else the checker's default."""
    if config.min_sync_confidence is not None:
        return config.min_sync_confidence
    return getattr(sync_checker, "default_min_confidence", 3.0)


def source_fingerprint(path: str) -> dict | None:
    """Size and modification time of a source video (None when it cannot be read): a resumed run redoes a video
    whose file no longer matches the one its state was made from."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def scan_video(path: str, relpath: str, config: PrepareConfig) -> VideoScan:
    """Steps 1-4 of the module docstring of [`latentsync.data.prepare`]: probe (unreadable, mute and silent files
    are dropped whole), audio (of a file with several audio tracks, the one with the speech, recorded as
    ``audio_track``: see [`~latentsync.media.audio.speech_track`]), scene cuts and faces, and the clip plan; ``plan``
    is empty when nothing is usable."""
    result = {"source": source_text(relpath), "key": video_key(relpath), "status": "done", "frames": 0, "clips": [],
              "dropped": {}, "source_file": source_fingerprint(path)}
    scan = VideoScan(result)
    try:
        info = probe_video(path)
    except InvalidVideoError as exc:
        _drop_video(result, "unreadable", str(exc))
        return scan
    frames = int(info.duration * FPS)  # what the header says: the footage a whole-video drop takes
    if not info.has_audio:
        _drop_video(result, "no_audio", "no audio stream", frames)
        return scan
    track = speech_track(path) if info.audio_tracks > 1 else None  # the voice may be on another track than the first
    if track is not None:
        result["audio_track"] = track.record()
    try:
        audio = load_audio(path, SAMPLE_RATE, video_clock=True, track=track.index if track is not None else 0)
        check_not_silent(audio, path)
    except InvalidAudioError as exc:
        _drop_video(result, "silent_audio" if "silent" in str(exc) else "no_audio", str(exc), frames)
        return scan
    try:
        anchors, cuts = _scan(path, config)
    except InvalidVideoError as exc:
        _drop_video(result, "unreadable", str(exc), frames)
        return scan
    n = len(anchors)
    if n == 0:  # the decoder gave no frame (every video packet damaged)
        _drop_video(result, "unreadable", "no video frame could be decoded", frames)
        return scan
    result["frames"] = n
    has_face = ~np.isnan(anchors[:, 0, 0])
    with_audio = min(n, len(audio) // SAMPLES_PER_FRAME)
    if with_audio < n:  # frames past the end of the audio track cannot be used (a frame-level drop)
        _drop(result, "audio_ends_early", n - with_audio, count=0)
    plan, frame_drops = plan_clips(has_face[:with_audio], cuts, config.min_frames, config.max_frames)
    for reason, frames in frame_drops.items():
        if frames:
            _drop(result, reason, frames, count=0)
    result["scene_cuts"] = [int(c) for c in cuts]
    smoothed = np.full_like(anchors, np.nan)
    for s, e in plan:
        smoothed[s:e] = smooth_anchors(anchors[s:e], config.landmark_smoothing)
    return replace(scan, audio=audio, plan=plan, anchors=smoothed)


def aligned_clips(path: str, scan: VideoScan, config: PrepareConfig) -> Iterator[PlannedClip]:
    """Step 5: decode the video again and yield each planned clip's faces aligned at ``config.resolution``, in plan
    order (one clip in memory at a time). When the decode ends early, the clips it did not reach are not yielded
    (see [`record_unreached`])."""
    plan = scan.plan or []
    if not plan:
        return
    aligner = FaceAligner(config.resolution)
    starts = {s: (k, e) for k, (s, e) in enumerate(plan)}
    current: tuple[int, int, int] | None = None
    faces: list[np.ndarray] = []
    for i, frame in enumerate(iter_frames(path, fps=FPS)):
        if current is None and i in starts:
            k, e = starts[i]
            current, faces = (k, i, e), []
        if current is None:
            continue
        faces.append(aligner.align(frame, aligner.matrix(scan.anchors[i])))
        k, s, e = current
        if i == e - 1:
            yield PlannedClip(k, s, e, faces)
            current, faces = None, []
        if i >= plan[-1][1]:
            break


def record_unreached(result: dict, plan: list[tuple[int, int]], aligned: int) -> None:
    """Record as ``unreadable`` the planned clips after the first ``aligned`` ones: the second decode of the video
    ended before them (it should not happen: the first decode read those frames)."""
    for s, e in plan[aligned:]:
        _drop(result, "unreadable", e - s)


def check_sync(clip: PlannedClip, audio: np.ndarray, config: PrepareConfig, sync_checker: SyncChecker | None,
               source: str = "") -> ClipCheck:
    """Step 6: the clip's audio-visual offset and confidence, and whether they drop it (``sync_failed``,
    ``sync_offset``, ``low_sync_confidence``). Without the sync step: offset 0, confidence NaN, kept."""
    if not config.sync or sync_checker is None:
        return ClipCheck()
    try:
        offset, confidence = sync_checker(clip.faces, audio, clip.start)
    except LatentSyncInputError as exc:
        logger.warning("%s frames %d-%d: %s", source, clip.start, clip.end, exc)
        return ClipCheck(None, None, reason="sync_failed")
    check = ClipCheck(int(offset), float(confidence))
    if abs(check.offset) > config.max_sync_offset:
        check.reason = "sync_offset"
    elif not check.confidence >= sync_threshold(config, sync_checker):
        check.reason = "low_sync_confidence"
    return check


def check_quality(clip: PlannedClip, check: ClipCheck, quality_scorer) -> ClipCheck:
    """Step 7, for a clip the sync step kept: its quality score, and ``low_quality`` when below the scorer's
    threshold (no scorer: score NaN, kept)."""
    if check.reason is not None or quality_scorer is None:
        return check
    score = float(quality_scorer(clip.faces))
    return replace(check, score=score, reason=None if score >= quality_scorer.threshold else "low_quality")


def check_clip(clip: PlannedClip, audio: np.ndarray, config: PrepareConfig, sync_checker: SyncChecker | None,
               quality_scorer, source: str = "") -> ClipCheck:
    """Steps 6 and 7 one after the other (quality only for clips the sync step kept)."""
    return check_quality(clip, check_sync(clip, audio, config, sync_checker, source), quality_scorer)


def clip_id(key: str, index: int) -> str:
    """The id (and file stem) of planned clip ``index`` of the video with key ``key``."""
    return f"{key}_{index:04d}"


def write_clip(clip: PlannedClip, audio: np.ndarray, offset: int, key: str, clips_dir: str,
               config: PrepareConfig) -> str:
    """Step 8: write a kept clip as ``<clips_dir>/<id>.mp4`` (H.264 at ``config.crf`` + AAC, its audio taken
    ``offset`` frames later in the track); returns the file name."""
    os.makedirs(clips_dir, exist_ok=True)
    name = clip_id(key, clip.index) + ".mp4"
    clip_audio = shifted_audio(audio, clip.start, clip.end, offset)
    with tempfile.TemporaryDirectory(prefix="latentsync-prepare-") as tmp:
        wav = os.path.join(tmp, "audio.wav")
        write_wav(wav, clip_audio)
        with VideoWriter(os.path.join(clips_dir, name), fps=FPS, audio_path=wav, crf=config.crf) as writer:
            for face in clip.faces:
                writer.write(face)
    return name


def record_clip(result: dict, index: int, start: int, end: int, check: ClipCheck, config: PrepareConfig,
                scorer_name: str, file: str | None = None) -> None:
    """Add planned clip ``index`` (frames ``start .. end - 1``) to the video's record: kept (``file`` written) or
    dropped with the figures that decided. Called in plan order, so both engines give the same record."""
    if check.reason in ("sync_failed", "sync_offset", "low_sync_confidence"):
        _drop_clip(result, check.reason, start, end, check.offset, check.confidence)
    elif check.reason == "low_quality":
        _drop_clip(result, check.reason, start, end, check.offset if config.sync else None,
                   check.confidence if config.sync else None, check.score)
    elif check.reason is not None:
        raise ValueError(f"unknown drop reason {check.reason!r}")
    else:
        result["clips"].append({
            "id": clip_id(result["key"], index),
            "file": file,
            "source": result["source"],
            "start": start / FPS,
            "end": end / FPS,
            "num_frames": end - start,
            "sync_offset": check.offset,
            "sync_confidence": check.confidence,
            "quality_score": check.score,
            "quality_scorer": scorer_name,
        })


def scorer_name(quality_scorer) -> str:
    """The name recorded with each kept clip's quality score (``none`` without a scorer)."""
    return getattr(quality_scorer, "name", "none")


def process_video(path: str, relpath: str, clips_dir: str, config: PrepareConfig,
                  sync_checker: SyncChecker | None = None, quality_scorer=None) -> dict:
    """Turn one source video into clips under ``clips_dir``; return its result record (clips + drops).

    ``sync_checker`` and ``quality_scorer`` run the sync and quality steps (skipped when None)."""
    scan = scan_video(path, relpath, config)
    aligned = 0
    for clip in aligned_clips(path, scan, config):
        _finish_clip(scan.result, clip, scan.audio, clips_dir, config, sync_checker, quality_scorer)
        aligned += 1
    record_unreached(scan.result, scan.plan or [], aligned)
    return scan.result


def failed_record(relpath: str, error: str, status: str = "failed", path: str | None = None) -> dict:
    """The record of a video whose processing raised (``failed``: its state is saved and ``--retry-failed`` redoes
    it, as does any run once the file at ``path`` has changed) or whose worker died (``crashed``: no state is saved,
    the next run redoes it); ``error`` says why."""
    record = {"source": source_text(relpath), "status": status, "frames": 0, "clips": [],
              "dropped": {"error": {"count": 1, "seconds": 0.0}}, "error": source_text(error)}
    if status == "failed":
        record["key"] = video_key(relpath)
    if path is not None:
        record["source_file"] = source_fingerprint(path)
    return record


def fresh_clips_dir(clips_dir: str) -> None:
    """Remove what an interrupted earlier attempt at this video left in its clip folder."""
    if os.path.isdir(clips_dir):
        shutil.rmtree(clips_dir)


def _finish_clip(result: dict, clip: PlannedClip, audio: np.ndarray, clips_dir: str, config: PrepareConfig,
                 sync_checker, quality_scorer) -> None:
    """Steps 6-8 of one clip in this process: check it, write it when it passes, record it either way."""
    check = check_clip(clip, audio, config, sync_checker, quality_scorer, result["source"])
    file = None if check.reason else write_clip(clip, audio, check.offset, result["key"], clips_dir, config)
    record_clip(result, clip.index, clip.start, clip.end, check, config, scorer_name(quality_scorer), file)
