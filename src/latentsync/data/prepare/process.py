"""One source video: probe, scan (scene cuts and faces), plan clips, align, check sync and quality, write clips."""

from __future__ import annotations

import logging
import os
import tempfile

import cv2
import numpy as np

from ...errors import InvalidAudioError, InvalidVideoError, LatentSyncInputError
from ...face.alignment import FaceAligner, smooth_anchors
from ...face.detection import FaceDetector
from ...media.audio import check_not_silent, load_audio, write_wav
from ...media.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
from ...media.constants import VIDEO_FPS as FPS
from ...media.video import VideoWriter, iter_frames, probe_video
from .config import PrepareConfig
from .planning import plan_clips, shifted_audio, video_key
from .sync import SyncChecker

logger = logging.getLogger(__name__)

SCENE_DETECT_WIDTH = 320


def _drop(result: dict, reason: str, frames: int = 0, count: int = 1) -> None:
    d = result["dropped"].setdefault(reason, {"count": 0, "seconds": 0.0})
    d["count"] += count
    d["seconds"] += frames / FPS


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


def process_video(path: str, relpath: str, clips_dir: str, config: PrepareConfig,
                  sync_checker: SyncChecker | None = None, quality_scorer=None) -> dict:
    """Turn one source video into clips under ``clips_dir``; return its result record (clips + drops).

    ``sync_checker`` and ``quality_scorer`` run the sync and quality steps (skipped when None)."""
    key = video_key(relpath)
    result = {"source": relpath, "key": key, "status": "done", "frames": 0, "clips": [], "dropped": {}}
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
        audio = load_audio(path, SAMPLE_RATE)
        check_not_silent(audio, path)
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
    """Sync and quality checks of planned clip ``k`` (frames ``s .. e - 1``); write it when it passes, else record
    why it was dropped (with its offset, confidence and quality score)."""
    offset, confidence = 0, float("nan")
    if config.sync and sync_checker is not None:
        try:
            offset, confidence = sync_checker(faces, audio, s)
        except LatentSyncInputError as exc:
            logger.warning("%s frames %d-%d: %s", result["source"], s, e, exc)
            _drop_clip(result, "sync_failed", s, e)
            return
        offset, confidence = int(offset), float(confidence)
        if abs(offset) > config.max_sync_offset:
            _drop_clip(result, "sync_offset", s, e, offset, confidence)
            return
        if not confidence >= sync_threshold(config, sync_checker):
            _drop_clip(result, "low_sync_confidence", s, e, offset, confidence)
            return
    score = float(quality_scorer(faces)) if quality_scorer is not None else float("nan")
    if quality_scorer is not None and not score >= quality_scorer.threshold:
        _drop_clip(result, "low_quality", s, e, offset if config.sync else None,
                   confidence if config.sync else None, score)
        return
    clip_id = f"{result['key']}_{k:04d}"
    clip_path = os.path.join(clips_dir, clip_id + ".mp4")
    clip_audio = shifted_audio(audio, s, e, offset)
    with tempfile.TemporaryDirectory(prefix="latentsync-prepare-") as tmp:
        wav = os.path.join(tmp, "audio.wav")
        write_wav(wav, clip_audio)
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
