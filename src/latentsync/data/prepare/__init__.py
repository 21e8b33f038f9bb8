"""Data preparation (``latentsync prepare``): raw talking-head videos -> a Hugging Face ``datasets`` training set.

Per source video (in one worker process of the local engine, or as tasks and actor calls on Ray with
``engine="ray"``, see ``ray_engine``):

1. probe; unreadable files, files without audio and silent files are dropped;
2. decode at 25 fps (ffmpeg ``fps`` filter) and the audio at 16 kHz mono (of a file with several audio tracks, the
   one with the speech, recorded in the video's state and the summary);
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
``summary.json`` / ``summary.md`` list which filters ran, were skipped or fell back, what was kept and what was
dropped and why; ``dropped_clips.csv`` lists every clip a filter dropped with its sync offset, sync confidence and
quality score, and ``dropped_videos.csv`` every source video that gave no clip, with its reason. A run that keeps
no clip writes no dataset and raises [`NoClipsKeptError`].

Modules: ``config`` (settings, summary, drop reasons), ``planning`` (finding videos, cutting clips, re-cutting
audio), ``sync`` (the SyncNet offset check), ``process`` (one video: steps 1-8 as stage functions), ``run`` (all
videos, the local engine's workers, resume), ``ray_engine`` (the stages on Ray; imported only when asked for),
``dataset`` (the ``datasets`` output). The command line is in [`latentsync.commands.prepare`].
"""

from __future__ import annotations

from typing import Any

from ..._lazy import package_attribute

# name -> the module of this package that holds it (imported on first use, so that ``config``, which the command line
# reads before it loads torch, can be imported without the modules that need torch, MediaPipe and datasets)
_HOMES = {
    "DROPPED_CLIP_COLUMNS": "config", "DROP_REASONS": "config", "NoClipsKeptError": "config",
    "PrepareConfig": "config", "PrepareStorageError": "config", "PrepareSummary": "config",
    "build_prepared_dataset": "dataset", "dataset_features": "dataset", "decode_clip": "dataset",
    "load_prepared": "dataset", "push_prepared": "dataset",
    "find_videos": "planning", "plan_clips": "planning", "shifted_audio": "planning", "video_key": "planning",
    "process_video": "process",
    "prepare_dataset": "run",
    "SyncChecker": "sync", "SyncNetChecker": "sync", "load_sync_checker": "sync",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """``latentsync.data.prepare.NAME``: imported from the module that holds it, on first use; the constants and the
    command line that lived here keep working for one release, with a warning."""
    return package_attribute(__name__, _HOMES, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
