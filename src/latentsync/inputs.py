"""The checks of a lip-sync run's inputs, made before any work: the arguments' ranges, both media files (probed with
ffmpeg; the audio is decoded as a stream to find silence, nothing is kept), the output path (never an input, writable,
not replacing a file unless asked), and warnings for odd but valid inputs.

[`check_run_inputs`] is the one path: [`LatentSyncPipeline.check_inputs`] calls it at the start of every call, and
the command line and the app call it before loading the model, so bad input is reported in a fraction of a second.
Importing this module does not import torch.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from .avatar import avatar_config
from .errors import InvalidVideoError, LatentSyncInputError
from .face.choice import check_face_arguments, track_key
from .media.audio import AudioInfo, AudioTrack, Track, check_not_silent, chosen_track, scan_audio
from .media.constants import VIDEO_FPS
from .media.probe import VideoInfo, probe_video
from .media.video import check_output_path

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("np", "pil", "pt", "file")
"""Forms of the output frames: NumPy array, PIL images, torch tensor, or only the written file."""

LONG_AUDIO_RATIO = 2.0
"""Audio more than this many times as long as the video is reported: the video then loops several times."""


@dataclass
class CheckedInputs:
    """What the checks found out about a run's inputs.

    Attributes:
        video: the probed video file (None for frames in memory).
        audio: the scanned sound of the output: the audio file, the ``mix_audio`` file, or the longest voice of a
            voice per face (None for samples in memory).
        voices: the scanned speech file of each voice (one, or one per face of an audio mapping; in memory: none).
        output_path: the checked output path (None when no file is written).
        warnings: odd but valid inputs, in words (already logged).
        speech_track: the track of the speech file that the run reads (see [`speech_track_of`]).
    """

    video: VideoInfo | None = None
    audio: AudioInfo | None = None
    voices: list[AudioInfo] = field(default_factory=list)
    output_path: str | None = None
    warnings: list[str] = field(default_factory=list)
    speech_track: Track = "speech"


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """[`LatentSyncInputError`] unless ``value`` is an integer in ``[low, high]``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise LatentSyncInputError(f"{name} must be an integer {bound}, got {value!r}")


def check_number(name: str, value: Any, low: float, hint: str = "") -> None:
    """[`LatentSyncInputError`] unless ``value`` is a finite number ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < low:
        raise LatentSyncInputError(f"{name} must be a finite number >= {low:g}{hint}, got {value!r}")


def check_arguments(
    num_inference_steps: int = 20,
    guidance_scale: float = 1.5,
    num_frames: int = 16,
    max_num_frames: int | None = None,
    face_index: int | None = None,
    landmark_smoothing: float = 1.5,
    crf: int = 18,
    deep_cache_interval: int = 0,
    output_type: str | None = None,
    output_path: str | os.PathLike | None = None,
    windows_per_batch: int | None = None,
) -> None:
    """Check the numeric and named arguments of a call (see [`LatentSyncPipeline.__call__`]).

    ``max_num_frames`` is the longest window the model's temporal layers support (None: no limit).

    Raises:
        LatentSyncInputError: the first argument out of range, by name.
    """
    check_int("num_inference_steps", num_inference_steps, 1)
    check_number("guidance_scale", guidance_scale, 1.0, " (1 disables guidance)")
    if max_num_frames is not None and isinstance(num_frames, numbers.Integral) and num_frames > max_num_frames:
        raise LatentSyncInputError(f"num_frames must be an integer between 1 and {max_num_frames} (the longest window "
                                   f"this model's temporal layers support), got {num_frames!r}")
    check_int("num_frames", num_frames, 1, max_num_frames)
    if face_index is not None:
        check_int("face_index", face_index, 0)
    check_number("landmark_smoothing", landmark_smoothing, 0.0)
    check_int("crf", crf, 0, 51)
    check_int("deep_cache_interval", deep_cache_interval, 0)
    if windows_per_batch is not None:
        check_int("windows_per_batch", windows_per_batch, 1)
    if output_type not in (None, *OUTPUT_TYPES):
        raise LatentSyncInputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)} or None, "
                                   f"got {output_type!r}")
    if output_type == "file" and output_path is None:
        raise LatentSyncInputError('output_type="file" needs an output_path')


def check_output_fps(output_fps: Any) -> None:
    """[`LatentSyncInputError`] unless ``output_fps`` is ``"input"`` (the video's own timeline) or a frame rate in
    [1, 240]."""
    if output_fps == "input":
        return
    ok = isinstance(output_fps, numbers.Real) and not isinstance(output_fps, bool) and math.isfinite(output_fps)
    if not ok or not 1 <= output_fps <= 240:
        raise LatentSyncInputError(f'output_fps must be "input" or a frame rate between 1 and 240, got '
                                   f"{output_fps!r}")


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def check_run_inputs(
    video: Any,
    audio: Any,
    output_path: str | os.PathLike | None = None,
    overwrite: bool = True,
    create_output_folder: bool = False,
    mix_audio: Any = None,
    face: Any = None,
    face_box: Any = None,
    face_box_frame: Any = 0,
    output_fps: Any = VIDEO_FPS,
    avatar: Any = None,
    audio_track: Any = None,
    **arguments: Any,
) -> CheckedInputs:
    """Check everything about a run that can be checked before the model runs, and log warnings for odd inputs.

    Args:
        video, audio: paths (probed; the audio is decoded as a stream to check it is not silent; of a file with
            several audio tracks, the one with the speech: [`~latentsync.media.audio.speech_track`]) or data in
            memory (checked by the pipeline when it reads them). ``audio`` may be a mapping from face track to speech (a
            voice per face).
        output_path: where the video will be written (None: no file).
        overwrite: whether an existing output file may be replaced. Never an input: the output may not be (or link
            to) the video or an audio file.
        create_output_folder: the caller creates a missing output folder (its nearest existing parent must be
            writable).
        mix_audio: the output's sound instead of the speech (a path or samples), or None.
        face, face_box, face_box_frame: the choice of the face (see [`latentsync.face.choice.check_face_arguments`]).
        output_fps: the output's frame rate, or ``"input"`` (see [`check_output_fps`]; refused for a video whose
            frames have no timestamps, a raw stream).
        avatar: a prepared avatar folder (checked to be one; its files count as inputs) or a loaded avatar.
        audio_track: the track of the ``audio`` file to read, numbered from 1 (see [`speech_track_of`]), or None for
            the one with the speech.
        **arguments: the call's other arguments, checked by [`check_arguments`].

    Raises:
        LatentSyncInputError: the first problem found, in one line (an ``InvalidVideoError``, ``InvalidAudioError``,
            ``InvalidOutputError``, or the base class for arguments).
    """
    check_arguments(output_path=output_path, **arguments)
    check_output_fps(output_fps)
    if isinstance(audio, Mapping) and "array" in audio:
        raise LatentSyncInputError('audio looks like a datasets Audio dict ({"array", "sampling_rate", ...}): pass its '
                                   '"path", or its "array" at 16 kHz (cast_column("audio", Audio(sampling_rate=16000)))'
                                   "; a mapping of audio is a voice per face track")
    voices = dict(audio) if isinstance(audio, Mapping) else None
    avatar_inputs: list[Any] = []
    if avatar is not None:  # before the face arguments: an avatar takes none
        if _is_path(avatar):  # its JSON, read once: the timeline it was prepared for, and its files
            config, avatar_inputs = avatar_config(avatar)
            label, prepared_fps = os.fspath(avatar), config.get("fps")
        else:  # a loaded Avatar
            avatar_inputs = [getattr(avatar, "video_path", None)]
            label, prepared_fps = getattr(avatar, "label", "avatar"), getattr(avatar, "fps", None)
        check_avatar_arguments(label, prepared_fps, video, voices is not None, output_fps, face,
                               arguments.get("face_index"), face_box, face_box_frame)
    check_face_arguments(face, arguments.get("face_index"), face_box, face_box_frame,
                         list(voices) if voices is not None else None)
    checked = CheckedInputs()
    if _is_path(video):
        checked.video = probe_video(video)
        if output_fps == "input" and checked.video.no_timestamps:
            raise InvalidVideoError(f"output_fps input keeps the video's own timestamps, but {checked.video.path} has "
                                    "none (a raw stream such as .h264): give a frame rate, e.g. output_fps 25")
    speech = {f"audio for face {track_key(k)}": v for k, v in voices.items()} if voices is not None else \
        {"audio": audio}
    track = checked.speech_track = speech_track_of(audio, audio_track)
    for what, source in speech.items():
        if _is_path(source):
            if isinstance(source, AudioTrack):  # a track the file may not have: say how many it has
                chosen_track(source.path, source.number, f"{what} track")
            info = scan_audio(source, what=what, track=track)
            check_not_silent(info, info.path if voices is None else f"{info.path} ({what})")
            checked.voices.append(info)
    checked.audio = max(checked.voices, key=lambda a: a.duration) if checked.voices else None
    if _is_path(mix_audio):
        checked.audio = scan_audio(mix_audio, what="mix_audio", track="speech")
        check_not_silent(checked.audio, checked.audio.path)
    if output_path is not None:
        inputs = [os.fspath(x) for x in (video, mix_audio, *speech.values(), *avatar_inputs) if _is_path(x)]
        checked.output_path = check_output_path(output_path, inputs, overwrite, create_output_folder)
    checked.warnings = odd_input_warnings(checked.video, checked.audio, output_fps)
    for message in checked.warnings:
        warn(message)
    return checked


def check_avatar_arguments(label: str, prepared_fps: Any, video: Any = None, voice_per_face: bool = False,
                           output_fps: Any = VIDEO_FPS, face: Any = None, face_index: Any = None,
                           face_box: Any = None, face_box_frame: Any = 0) -> None:
    """Refuse the arguments that a run on the prepared avatar ``label`` (prepared for ``prepared_fps``) cannot
    honour: a video as well, a voice per face (an avatar has one face), a face choice (made when it was prepared)
    and an ``output_fps`` other than its own (it keeps its timeline; the default 25 means the avatar's own).

    Each message starts with the argument's name (the command line puts its option's name there) and names it
    again only as ``output_fps VALUE``.

    Raises:
        LatentSyncInputError: the first argument refused.
    """
    if video is not None:
        raise LatentSyncInputError("give either a video or a prepared avatar, not both")
    if voice_per_face:
        raise LatentSyncInputError("audio mapping key: an avatar has one face; give one audio, not a voice per face")
    chosen = [name for name, value in (("face", face not in (None, "largest")), ("face_index", face_index is not None),
                                       ("face_box", face_box is not None),
                                       ("face_box_frame", face_box_frame not in (None, 0))) if value]
    if chosen:
        raise LatentSyncInputError(f"{chosen[0]}: the face of an avatar was chosen when it was prepared "
                                   "(prepare_avatar's face arguments; `latentsync avatar VIDEO DIR --face ...`); a "
                                   "run on an avatar takes no face choice")
    if output_fps not in (VIDEO_FPS, prepared_fps):
        raise LatentSyncInputError(f"output_fps {output_fps}: the avatar {label} was prepared for output_fps "
                                   f"{prepared_fps}; prepare it again with output_fps {output_fps}, or leave "
                                   "output_fps out")


def speech_track_of(audio: Any, audio_track: Any = None) -> Track:
    """Which track of the speech file ``audio`` a run reads (and copies into its output): ``audio_track``, numbered
    from 1 as the log and players number them, or the one with the speech
    ([`~latentsync.media.audio.speech_track`]) when it is None.

    Raises:
        LatentSyncInputError: ``audio_track`` is given but ``audio`` is not one file (samples in memory, or a voice
            per face), or is not a track number.
        InvalidAudioError: the file does not have that track (the message says how many it has).
    """
    if audio_track is None:
        return "speech"
    if isinstance(audio, Mapping):
        raise LatentSyncInputError("audio_track chooses a track of one audio file, not of a voice per face (choose "
                                   "each voice's track: {face: AudioTrack(path, number)}, on the command line "
                                   "--audio-for FACE:TRACK=FILE)")
    if not _is_path(audio):
        raise LatentSyncInputError("audio_track chooses a track of an audio file; audio samples in memory have one")
    return chosen_track(audio, audio_track)


def odd_input_warnings(video: VideoInfo | None, audio: AudioInfo | None, output_fps: float | str = VIDEO_FPS
                       ) -> list[str]:
    """Sentences about valid inputs that may not give what the user expects (``output_fps`` as checked by
    [`check_output_fps`])."""
    found = []
    if video is not None:
        if video.rotation or video.mirrored:
            turn = [f"{video.rotation} degrees"] if video.rotation else []
            found.append(f"video {video.path} carries display metadata ({', '.join(turn + ['mirrored'] * video.mirrored)}"
                         f"): it is read as players show it ({video.width}x{video.height}) and the output is written "
                         "that way")
        if video.width % 2 or video.height % 2:
            repeated = " and ".join(side for side, odd in (("column", video.width % 2), ("row", video.height % 2)) if odd)
            found.append(f"video {video.path} is {video.width}x{video.height}: H.264 video needs even sides, so the "
                         f"output is {video.width + video.width % 2}x{video.height + video.height % 2} (its last "
                         f"{repeated} repeated)")
        if video.variable_frame_rate and video.frame_intervals is not None and output_fps != "input":
            shortest, longest = (round(1000 * t) for t in video.frame_intervals)
            found.append(f"video {video.path} has a variable frame rate (frames {shortest}-{longest} ms apart): it is "
                         f"resampled to {output_fps:g} fps by time (output_fps=\"input\" keeps its timing)")
        if video.truncated:
            found.append(f"video {video.path} ends before its header says ({video.duration:.1f} s): it looks "
                         "incomplete; the frames it holds are used")
    moving = video is not None and video.duration * max(video.fps, 1.0) > 1.5  # a still image is meant to repeat
    if moving and audio is not None and not video.truncated:
        ratio = audio.duration / video.duration
        if ratio > LONG_AUDIO_RATIO:
            found.append(f"the audio ({audio.duration:.1f} s) is {ratio:.0f} times as long as the video "
                         f"({video.duration:.1f} s): the output follows the audio, so the video will play "
                         f"{math.ceil(ratio)} times (forward, backward, ...)")
    return found


_already_given: ContextVar[frozenset[str]] = ContextVar("latentsync_warnings_given", default=frozenset())


def warn(message: str) -> None:
    """Log ``message`` as a warning, unless the caller has given it already (see [`warnings_given`])."""
    if message not in _already_given.get():
        logger.warning("%s", message)


@contextmanager
def warnings_given(messages: list[str]) -> Iterator[None]:
    """Within the block, [`warn`] keeps quiet about ``messages``: the command line has logged them when it checked
    the inputs before loading the model, and the pipeline checks the same inputs again when it is called."""
    token = _already_given.set(_already_given.get() | frozenset(messages))
    try:
        yield
    finally:
        _already_given.reset(token)
