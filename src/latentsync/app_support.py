"""What the Gradio app (``app.py``) computes without Gradio: the speed presets, the expected run time and the GPU
time a request asks for, the numbered preview of the faces found in an upload, the visitors' wording of input
errors, the examples' cache folder, the expiry of old results and the stop flags that reach a run in another
process.

Nothing here imports gradio or torch, so the app's arithmetic is testable on its own.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from .media.audio import parse_track_number
from .media.constants import VIDEO_FPS

if TYPE_CHECKING:
    from .face.tracking import FaceTracks

WINDOW_FRAMES = 16
"""Frames denoised together (one window)."""


@dataclass(frozen=True)
class SpeedPreset:
    """A named speed/quality trade-off: the sampler, its steps and the DeepCache interval.

    ``relative_cost`` is the model time of one window against the ``quality`` preset, as measured on an H100 with
    the full-size architecture (README, Benchmarks: DDIM 20 + DeepCache 3 ran 1.91x faster, DPM-Solver++ 10 +
    DeepCache 3 3.65x faster than DDIM 20).
    """

    name: str
    label: str
    scheduler: str
    steps: int
    deep_cache_interval: int
    relative_cost: float

    def cost(self, steps: int | None = None) -> float:
        """Model time of one window against ``quality``, for ``steps`` denoising steps (default: the preset's)."""
        return self.relative_cost * (steps or self.steps) / self.steps


PRESETS: dict[str, SpeedPreset] = {
    p.name: p for p in (
        SpeedPreset("quality", "Quality: official DDIM sampler, 20 steps", "ddim", 20, 0, 1.0),
        SpeedPreset("balanced", "Balanced: DDIM 20 steps with DeepCache (about 1.9x faster)", "ddim", 20, 3, 1 / 1.91),
        SpeedPreset("fast", "Fast: DPM-Solver++ 10 steps with DeepCache (about 3.6x faster)", "dpm++", 10, 3,
                    1 / 3.65),
    )
}
"""The app's speed presets by name; ``quality`` is the official setting."""

# Model seconds per 16-frame window at the quality preset (20 DDIM steps with classifier-free guidance, VAE
# included), full-size architecture on one NVIDIA H100 (README, Benchmarks, benchmarks/model_speed.py).
_H100_WINDOW_SECONDS = {
    (256, "bf16"): 1.385, (256, "fp16"): 2.167, (256, "fp32"): 3.761,
    (512, "bf16"): 4.116, (512, "fp16"): 4.298, (512, "fp32"): 15.692,
}
# Everything else per output frame on a GPU machine (decoding twice, face detection at about 30 fps on the CPU,
# alignment, paste-back, encoding): the end-to-end H100 run (31.7 s for 200 frames) less its model part, plus
# face detection, which that run did not include.
_GPU_FRAME_SECONDS = 0.10
# A full-size U-Net with motion modules: 26 s per 16-frame forward on two CPU cores at 256 px (environment notes),
# 40 forwards per window at the quality preset (20 steps, guidance doubles them).
_CPU_WINDOW_SECONDS_FULL_SIZE = 26.0 * 40
_FULL_SIZE_UNET_PARAMETERS = 1.267e9
# The rest of the CPU figures were measured on this project's 2-core x86-64 test machine with the tiny test model
# (latentsync.testing.build_tiny_pipeline(resolution=64): 0.35 M U-Net parameters, the app of tests/test_app.py) on
# 192 and 384 px clips of examples/face.mp4, 0.6 to 3.2 s long, every preset: the CPU seconds of the app's runs with
# one torch thread, which is about the wall time on an idle core (the machine was shared; its wall times were 1.5-2x
# longer). Earlier guesses (0.3 s per frame, 2 s per run, the model part scaled down by parameter count) made the
# first estimate of these runs about 5x too long.
# - Per quality window (20 DDIM steps with guidance, VAE included), from the difference between the quality and the
#   fast preset on the same clip: 0.44-0.52 s. A U-Net this small costs its per-call overhead, not its size, so
#   that is the floor of any model's window at 64 px, scaled by the face area above it (the tiny model at 256 px:
#   6-9 s measured, 8 s by this rule; scaling the full-size figure by parameter count said 0.3 s).
_CPU_WINDOW_SECONDS_FLOOR_64 = 0.5
# - Per output frame (decoding, face detection, alignment, paste-back, encoding): 0.015-0.016 s at both clip sizes,
#   rounded up for larger videos.
_CPU_FRAME_SECONDS = 0.02
# - Per run: 0.4 s, and 0.7 s more on the first run of a process (the face detector's and the models' first calls);
#   the first estimate is the first run's.
_CPU_FIXED_SECONDS = 1.1


@dataclass
class TimeModel:
    """Expected seconds of a request: ``fixed + frames * frame_seconds + windows * window_seconds * cost``.

    ``window_seconds`` is the model time of one 16-frame window at the quality preset with guidance; [`update`]
    refines it from measured runs (an exponential average), so that the estimate follows the machine it runs on.
    """

    window_seconds: float
    frame_seconds: float
    fixed_seconds: float = 10.0
    runs: int = field(default=0, compare=False)

    @classmethod
    def for_device(cls, device: str, dtype: str, resolution: int, unet_parameters: float) -> "TimeModel":
        """A starting estimate: the H100 figures for CUDA (scaled to ``resolution``), otherwise the full-size CPU
        figure scaled by the U-Net's size and the face area, at least the tiny model's measured per-call floor (a
        first guess that the runs correct)."""
        if device.startswith("cuda"):
            base = 256 if resolution <= 256 else 512
            window = _H100_WINDOW_SECONDS.get((base, dtype), _H100_WINDOW_SECONDS[(base, "fp16")])
            return cls(window * (resolution / base) ** 2, _GPU_FRAME_SECONDS)
        by_size = _CPU_WINDOW_SECONDS_FULL_SIZE * unet_parameters / _FULL_SIZE_UNET_PARAMETERS * (resolution / 256) ** 2
        floor = _CPU_WINDOW_SECONDS_FLOOR_64 * max(1.0, (resolution / 64) ** 2)
        return cls(max(by_size, floor), _CPU_FRAME_SECONDS, fixed_seconds=_CPU_FIXED_SECONDS)

    @staticmethod
    def _units(seconds: float, preset: SpeedPreset, steps: int | None, guidance: float) -> tuple[int, float]:
        frames = max(1, math.ceil(seconds * VIDEO_FPS - 1e-6))
        windows = math.ceil(frames / WINDOW_FRAMES)
        guided = 1.0 if guidance > 1.0 else 0.5  # guidance 1 runs the U-Net once per step instead of twice
        return frames, windows * preset.cost(steps) * guided

    def estimate(self, seconds: float, preset: SpeedPreset, steps: int | None = None, guidance: float = 1.5) -> float:
        """Expected seconds for ``seconds`` of output (the audio's length) with ``preset``."""
        frames, model_units = self._units(seconds, preset, steps, guidance)
        return self.fixed_seconds + frames * self.frame_seconds + model_units * self.window_seconds

    def update(self, measured: float, seconds: float, preset: SpeedPreset, steps: int | None = None,
               guidance: float = 1.5) -> None:
        """Refine ``window_seconds`` from a run that took ``measured`` seconds for ``seconds`` of output; a run faster
        than the fixed and per-frame parts alone scales those down too (their starting values are guesses)."""
        frames, model_units = self._units(seconds, preset, steps, guidance)
        weight = 1.0 if self.runs == 0 else 0.5
        floor = self.fixed_seconds + frames * self.frame_seconds
        if measured < floor:  # keep a quarter of the run for the model, the rest for the fixed and per-frame parts
            shrink = 0.75 * measured / floor
            self.fixed_seconds *= (1 - weight) + weight * shrink
            self.frame_seconds *= (1 - weight) + weight * shrink
            floor = self.fixed_seconds + frames * self.frame_seconds
        observed = max(0.0, measured - floor) / model_units
        self.window_seconds = (1 - weight) * self.window_seconds + weight * observed
        self.runs += 1


GPU_MARGIN = 1.5
"""Factor on the expected time when asking for GPU time (the estimate is from another GPU and other videos)."""
GPU_EXTRA_SECONDS = 20
"""Seconds added to every GPU request (moving the model, the first kernels, the queue hand-over)."""


def gpu_seconds(expected: float) -> int:
    """GPU seconds to ask for a request expected to take ``expected`` seconds: with the margin, rounded up."""
    return int(math.ceil(expected * GPU_MARGIN + GPU_EXTRA_SECONDS))


def face_choices(tracks: "FaceTracks | None", still: bool = False) -> list[tuple[str, str]]:
    """The face menu: ``(label, value)`` pairs. The value is ``"speaking"``, ``"largest"`` or a track number (as
    text), which the app passes on as the pipeline's ``face`` or ``face_index``. A still image has nobody speaking,
    so it offers only the largest face and the tracks."""
    choices = [] if still else [("Auto: the face that is speaking", "speaking")]
    choices.append(("The largest face", "largest"))
    for track in tracks or ():
        choices.append((f"Face {track.index}", str(track.index)))
    return choices


def default_face(still: bool = False) -> str:
    """The menu's default: the speaking face (the largest when nobody clearly speaks), the largest for a photo."""
    return "largest" if still else "speaking"


def face_menu_value(face: str | None, app_default: str | None, choices: Sequence[tuple[str, str]],
                    still: bool = False) -> tuple[str, str | None]:
    """The face menu's value when its ``choices`` change (an upload, a cleared upload, an example), and whether the
    app chose it: ``(value, value or None)``, None when the value is the visitor's own.

    The visitor's choice stays when the new choices offer it (a rule, or a face number the new input has); a face
    number of a cleared video, or no choice at all, gives the default for the new input. ``app_default`` is the value
    the app last put in the menu itself: a menu still showing it holds no choice of the visitor's, so the default of
    one input (``"largest"`` for a photo) never sticks to the next one (a video, whose default is ``"speaking"``).
    """
    values = [value for _, value in choices]
    chosen = face if face and face != app_default else None
    if chosen in values:
        return chosen, None
    value = default_face(still)
    return value, value


def face_arguments(choice: str | int | None) -> dict[str, object]:
    """The pipeline keyword arguments for a menu value: ``face=`` for a rule, ``face_index=`` for a track."""
    if choice is None or choice == "":
        return {}
    text = str(choice).strip().lower()
    if text in ("speaking", "largest"):
        return {"face": text}
    if text.removeprefix("face ").isdigit():
        return {"face_index": int(text.removeprefix("face "))}
    raise ValueError(f"face must be 'speaking', 'largest' or a face number, got {choice!r}")


AUTOMATIC_AUDIO_TRACK = "auto"
"""The speech-track menu's (and the API's) value for the automatic choice of the speech's audio track."""


def audio_track_choices(tracks: int, automatic: int = 0) -> list[tuple[str, str]]:
    """The speech-track menu for a speech file with ``tracks`` audio tracks: ``(label, value)`` pairs, the automatic
    choice first (``automatic``: the track it picks, counted from 0), then each track numbered from 1 as players
    number them."""
    choices = [(f"Automatic (track {automatic + 1}: the one with the speech)", AUTOMATIC_AUDIO_TRACK)]
    choices += [(f"Track {k}", str(k)) for k in range(1, tracks + 1)]
    return choices


def audio_track_number(choice: str | int | None) -> int | None:
    """The pipeline's ``audio_track`` (numbered from 1) for a speech-track menu value or an API caller's value: None
    for the automatic choice (``"auto"``, empty or None), the number for ``"2"``, ``"Track 2"`` or ``2``.

    Raises:
        ValueError: anything else (a number below 1 included), with a one-line message for the page.
    """
    if choice is None or str(choice).strip().lower() in ("", AUTOMATIC_AUDIO_TRACK):
        return None
    text = str(choice).strip().lower().removeprefix("track ")
    try:
        return parse_track_number(text)
    except ValueError:
        raise ValueError(f"audio track must be {AUTOMATIC_AUDIO_TRACK!r} or a track number from 1, got {choice!r}"
                         ) from None


def preview_frame(tracks: "FaceTracks") -> int:
    """The frame showing the most faces at once (the first such frame), 0 when there is none."""
    counts = np.zeros(max(tracks.num_frames, 1), dtype=int)
    for track in tracks:
        counts[track.frames[track.frames < len(counts)]] += 1
    return int(np.argmax(counts))


def _font(size: int) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return PIL.ImageFont.load_default()


def draw_faces(frame: np.ndarray, tracks: "FaceTracks", frame_index: int,
               highlight: int | None = None) -> PIL.Image.Image:
    """``frame`` with the box and number of every face found on it (``highlight``: the chosen one, in another
    colour). Faces not on that frame are listed at the top."""
    image = PIL.Image.fromarray(frame)
    draw = PIL.ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 160))
    font = _font(max(14, min(image.size) // 14))
    elsewhere = []
    for track in tracks:
        box = track.box_at(frame_index)
        if box is None:
            elsewhere.append(str(track.index))
            continue
        x, y, w, h = (float(v) for v in box)
        colour = "#ff3b30" if track.index == highlight else "#34c759"
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=width)
        label = f" {track.index} "
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tx, ty = x, max(0.0, y - (bottom - top) - 2 * width)
        draw.rectangle((tx, ty, tx + right - left, ty + bottom - top + width), fill=colour)
        draw.text((tx - left, ty - top), label, fill="white", font=font)
    if elsewhere:
        draw.text((8, 8), f"not in this frame: face {', '.join(elsewhere)}", fill="white", font=_font(14),
                  stroke_width=2, stroke_fill="black")
    return image


def read_frame(frames: Iterable[np.ndarray], index: int) -> np.ndarray | None:
    """Frame ``index`` of a frame iterator (the last one when it is shorter), None when it is empty."""
    last = None
    for i, frame in enumerate(frames):
        last = frame
        if i >= index:
            break
    return last


def describe_faces(tracks: "FaceTracks", still: bool = False) -> str:
    """One line for the page: how many faces were found and what the default does."""
    n = len(tracks)
    if n == 0:
        return "No face found: this input cannot be lip-synced."
    if n == 1:
        return "One face found (face 0)."
    rule = "the largest one" if still else "the one that is speaking (the largest when nobody clearly is)"
    return f"{n} faces found ({', '.join(str(t.index) for t in tracks)}); by default the lip sync picks {rule}."


def check_choice_in(choice: str, choices: Sequence[tuple[str, str]]) -> str:
    """``choice`` if it is among ``choices``' values, else the first value."""
    values = [value for _, value in choices]
    return choice if choice in values else values[0]


_FACE_INDEX_ERROR = re.compile(r"face_index=(\d+), but (\d+) face track\(s\) were found in (.+?) \(valid: [^)]*\)"
                               r"(?:;.*)?$", re.DOTALL)
_AUDIO_TRACK_ERROR = re.compile(r"audio_track (\d+): (.+) has (\d+) audio tracks? \(numbered from 1\)$", re.DOTALL)


def visitor_reason(message: str, names: Mapping[str, str]) -> str:
    """A library error message (a ``LatentSyncInputError``) as a one-line reason for the app's visitors: server paths
    replaced by the uploaded files' ``names`` (``{path: name}``), developer wording (``face_index=``, the API to list
    faces, ``audio_track``) replaced by the page's words, a capital first letter."""
    for path, name in names.items():
        message = message.replace(path, name)
    match = _FACE_INDEX_ERROR.match(message.strip())
    if match:
        index, count, where = int(match[1]), int(match[2]), match[3]
        numbers = {0: "no face", 1: "1 face (number 0)"}.get(
            count, f"{count} faces (numbers {', '.join(map(str, range(count - 1)))} and {count - 1})")
        message = f"There is no face {index} in {where}: it has {numbers}; pick one from the face menu."
    match = _AUDIO_TRACK_ERROR.match(message.strip())
    if match:
        count = int(match[3])
        message = (f"There is no audio track {match[1]} in {match[2]}: it has {count} audio track{'s' * (count > 1)}; "
                   "pick one from the speech-track menu.")
    message = message.splitlines()[0] if message.strip() else message
    return message[:1].upper() + message[1:]


def photo_error(path: str) -> str | None:
    """Why ``path`` (an upload in the photo slot) is not a photo, as a one-line reason naming the file; None when
    Pillow reads it as an image."""
    try:
        with PIL.Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError):
        return f"Cannot read photo {Path(path).name}: not an image file."
    return None


def examples_cache_dir(model: str, settings: Mapping[str, object], base: str | os.PathLike = ".gradio/cached_examples"
                       ) -> Path:
    """The folder for the examples' cached results of ``model`` (a Hub id, a local folder or ``tiny``) run with
    ``settings``: named after both, so that an app restarted with another model never shows this one's results. A
    local folder counts with its resolved path and last change."""
    key = model
    if os.path.isdir(model):
        key = f"{Path(model).resolve()}@{os.stat(model).st_mtime_ns}"
    key += "|" + "|".join(f"{name}={settings[name]}" for name in sorted(settings))
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", Path(model).name or model).strip("-")[:40] or "model"
    return Path(base) / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def remove_expired(folder: str | os.PathLike, ttl: float, keep: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Remove the entries of ``folder`` last changed more than ``ttl`` seconds ago (except ``keep``); returns them."""
    limit, kept = time.time() - ttl, {Path(p) for p in keep}
    removed = []
    for entry in Path(folder).iterdir():
        try:
            if entry not in kept and entry.stat().st_mtime < limit:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def on_zero_gpu() -> bool:
    """Whether this is a ZeroGPU Space (its ``SPACES_ZERO_GPU`` setting, as the ``spaces`` package reads it): there
    the GPU exists only inside the functions given to ``spaces.GPU``, each call in a worker process."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "t", "true")


@dataclass(frozen=True)
class StopFlag:
    """A request to stop, as a file: the app's process raises it, and a lip sync looks for it at each denoising step,
    in whatever process of this machine it runs. On a ZeroGPU Space the GPU function runs in a worker process that
    the ``spaces`` package forks once and then reuses; a flag in the app's memory (an event, a set of closed pages)
    is only copied into it at the fork, so a later change never reaches the run."""

    path: str

    def set(self, reason: str = "") -> bool:
        """Raise the flag, saying why (a word for the run); False when its folder is gone (the run it was for has
        ended and was removed)."""
        try:
            Path(self.path).write_text(reason)
        except FileNotFoundError:
            return False
        return True

    def is_set(self) -> bool:
        """Whether the flag is raised."""
        return os.path.exists(self.path)

    def reason(self) -> str | None:
        """Why the flag was raised ("" when not said); None when it is not raised."""
        try:
            return Path(self.path).read_text()
        except FileNotFoundError:
            return None

    def clear(self) -> None:
        """Lower the flag."""
        Path(self.path).unlink(missing_ok=True)
