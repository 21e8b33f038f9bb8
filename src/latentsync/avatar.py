"""A prepared avatar: everything about a talking-face video that does not depend on the speech, computed once.

[`LatentSyncPipeline.prepare_avatar`] runs the face analysis, the alignment and the VAE encoder over a video and
saves the result in a folder; ``pipe(avatar=folder, audio=...)`` and ``pipe.stream(..., avatar=folder)`` then run
only the audio features, the denoising, the VAE decoder and the paste-back. The folder holds:

- ``avatar.json``: the format version, the face resolution, the timeline (frame rate, or the timestamps of every
  frame with ``output_fps="input"``), the frame size, the alignment matrix of every frame (null where no face is
  lip-synced), and a fingerprint of the VAE that encoded the faces;
- ``avatar.safetensors``: the aligned face crops ``(F, R, R, 3)`` uint8 and the VAE posteriors of the masked and the
  whole faces ``(F, 8, R/8, R/8)`` (mean and log-variance, the VAE encoder's output) of the ``F`` frames with a face;
- the video itself (a copy of the file, decoded again for the paste-back), or ``frames.safetensors`` for frames
  given in memory.

``avatar.json`` is written last and removed first when an avatar is replaced, so a folder with it is complete. The
files are written beside their final names and renamed, and an avatar is only written into a new or empty folder or
over another avatar: never over a user's own files (a ``video.mp4`` that happens to be there).

Concurrent runs. A writer holds the folder's lock ([`avatar_writer`]: ``flock`` on the folder, released when the
process ends however it ends; none on Windows) while it writes, and ``latentsync avatar`` from before its model loads:
a second writer into the same folder at the same time is refused at once with one line (it does not wait: the
second run would only replace the first one's avatar). Readers take no lock and never wait: [`Avatar.load`] reads
the JSON again after the tensors and starts over when it changed (each write gives it a new ``generation``), so it
returns one whole avatar, old or new, or says that the folder is being written; and the video, decoded later, is
checked to be the file the avatar was loaded with, so a run never pastes one avatar's faces onto another's video.

Why posteriors and not latents: the pipeline draws a sample from each VAE posterior with the call's generator
(the official code does). Storing a sample would fix one draw, and a seeded call on the avatar would no longer give
the frames of the same seeded call on the video. The avatar stores the distribution and the call draws from it, in
the same order and batch shapes as the full call, so ``pipe(avatar=..., generator=seeded)`` gives exactly the frames
of ``pipe(video=..., generator=seeded)`` with the same face choice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import LatentSyncInputError, first_line
from .media.timeline import open_timed_frames
from .media.video import FrameSource, open_frames
from .tempfiles import (
    folder_held,
    folder_is_locked,
    lock_folder,
    make_missing_folders,
    nearest_folder,
    partial_target,
    writable_problem,
    write_atomically,
)

if TYPE_CHECKING:
    import torch

AVATAR_VERSION = 1
AVATAR_CONFIG = "avatar.json"
AVATAR_TENSORS = "avatar.safetensors"
AVATAR_FRAMES = "frames.safetensors"
LOAD_ATTEMPTS = 3  # reads of an avatar that another run is replacing meanwhile, before giving up

# torch and safetensors.torch are imported where they are used: the command line checks an avatar folder (and an
# output path against its files) before it spends seconds importing torch


def avatar_files(path: str | os.PathLike) -> list[str]:
    """The files of the prepared avatar in folder ``path`` (its JSON, its tensors, its video or frames), checked
    without reading the tensors.

    Raises:
        LatentSyncInputError: ``path`` is not a complete avatar folder of this format version.
    """
    return avatar_config(path)[1]


def avatar_config(path: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """The JSON of the prepared avatar in folder ``path`` (its ``fps``, ``num_frames``...) and its files, as
    [`avatar_files`] checks them (the tensors are not read).

    Raises:
        LatentSyncInputError: ``path`` is not a complete avatar folder of this format version.
    """
    path = os.fspath(path)
    config_path, tensors_path = os.path.join(path, AVATAR_CONFIG), os.path.join(path, AVATAR_TENSORS)
    if not os.path.isfile(config_path) or not os.path.isfile(tensors_path):
        if os.path.isfile(tensors_path):  # the JSON is removed first and written last
            raise LatentSyncInputError(f"avatar {path} is incomplete (no {AVATAR_CONFIG}): another run is writing it "
                                       "right now, or a run writing it stopped; wait for it, or prepare it again")
        reason = "no such folder" if not os.path.exists(path) else f"no {AVATAR_CONFIG} and {AVATAR_TENSORS}"
        raise LatentSyncInputError(f"not a prepared avatar ({reason}): {path}")
    try:
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise LatentSyncInputError(f"avatar {path} has an unreadable {AVATAR_CONFIG} ({exc}): prepare it again") \
            from None
    if not isinstance(config, dict) or config.get("version") != AVATAR_VERSION:
        version = config.get("version") if isinstance(config, dict) else None
        raise LatentSyncInputError(f"avatar {path} has format version {version}; this version of latentsync reads "
                                   f"version {AVATAR_VERSION}: prepare it again")
    video = config.get("video", "")
    if video is not None and (not isinstance(video, str) or not video or os.path.basename(video) != video):
        raise LatentSyncInputError(f"avatar {path} has a damaged {AVATAR_CONFIG} (no valid \"video\" entry): "
                                   "prepare it again")
    frames_path = os.path.join(path, video or AVATAR_FRAMES)
    if not os.path.isfile(frames_path):
        raise LatentSyncInputError(f"avatar {path} is missing its {'video' if video else 'frames'} "
                                   f"{os.path.basename(frames_path)}")
    return config, [config_path, tensors_path, frames_path]


def _is_avatar_file(name: str) -> bool:
    """Whether an avatar writes a file named ``name``."""
    return name in (AVATAR_CONFIG, AVATAR_TENSORS, AVATAR_FRAMES) or name.startswith("video.")


_writers: dict[str, int] = {}  # avatar folders (real paths) this process holds, and the thread that holds each
_writers_lock = threading.Lock()


def _busy_error(path: str) -> LatentSyncInputError:
    return LatentSyncInputError(f"the avatar folder {path} is being written by another run right now: wait for it "
                                "to end, or choose another folder")


@contextlib.contextmanager
def avatar_writer(path: str | os.PathLike) -> Iterator[None]:
    """Hold the avatar folder ``path`` for writing within the block (created when missing, and removed again when
    the block fails while it is still empty). The lock is ``flock`` on the folder, so it is released when the
    process ends however it ends; a file system without locks, or Windows, runs without one. The thread that holds
    a folder may enter the block again (``latentsync avatar`` holds it around ``prepare_avatar``, which saves).

    Raises:
        LatentSyncInputError: another process, or another thread of this one, holds the folder (one line; the
            caller does not wait).
    """
    path = os.fspath(path)
    key = os.path.realpath(path)
    me = threading.get_ident()
    with _writers_lock:
        holder = _writers.get(key)
        if holder is None:
            _writers[key] = me
    if holder == me:
        yield
        return
    if holder is not None:
        raise _busy_error(path)
    try:
        created = make_missing_folders(path)
        try:
            fd = lock_folder(path)
        except BlockingIOError:  # the other run may be writing into the folder this one just created: kept
            raise _busy_error(path) from None
        with folder_held(created, fd):
            yield
    finally:
        with _writers_lock:
            del _writers[key]


def _writer_busy(path: str) -> bool:
    """Whether another process or thread holds the existing avatar folder ``path`` ([`avatar_writer`])."""
    with _writers_lock:
        holder = _writers.get(os.path.realpath(path))
    if holder is not None:
        return holder != threading.get_ident()
    return os.path.isdir(path) and folder_is_locked(path)


def check_avatar_destination(path: str | os.PathLike, overwrite: bool = True) -> None:
    """Check that an avatar may be written to the folder ``path``: a new or empty folder, one holding only the files of
    an avatar whose writing stopped, or (with ``overwrite``) a folder holding another avatar.

    Raises:
        LatentSyncInputError: ``path`` is a file, holds an avatar while ``overwrite`` is False, holds files that
            are not an avatar's (they could be replaced: the copy of the video is named ``video.<ext>``), or another
            run is writing an avatar there right now.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise LatentSyncInputError(f"the avatar folder {path} is a file: give a new folder")
    if _writer_busy(path):
        raise _busy_error(path)
    names = set(os.listdir(path)) if os.path.isdir(path) else set()
    # the partial files of a run that was killed while writing an avatar there
    names = {n for n in names if not _is_avatar_file(partial_target(n) or "")}
    if not names:
        if os.path.isdir(path):
            parent = path
        else:
            parent, blocker = nearest_folder(os.path.dirname(os.path.abspath(path)))
            if blocker is not None:
                raise LatentSyncInputError(f"cannot create the avatar folder {path}: {blocker} is a file")
    elif AVATAR_CONFIG in names:
        if not overwrite:
            raise LatentSyncInputError(f"{path} already holds an avatar (replace it with --overwrite / "
                                       "overwrite=True)")
        parent = path
    elif AVATAR_TENSORS in names and all(_is_avatar_file(n) for n in names):
        parent = path  # an avatar whose writing was stopped before its JSON: not usable, written again
    else:
        raise LatentSyncInputError(f"{path} is a folder with other files, not an avatar: give a new or empty "
                                   "folder (an avatar writes avatar.json, avatar.safetensors and a copy of the video "
                                   "there)")
    # a real write (not os.access, which says yes to root, and on some mounts): a read-only folder or file system
    # is found here, before the model loads, not half way through replacing an avatar
    problem = writable_problem(parent)
    if problem is not None:
        raise LatentSyncInputError(f"cannot write the avatar folder {path}: {parent} is not writable ({problem})")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _identity(path: str) -> tuple[int, ...] | None:
    """What tells a file apart from one that replaced it (renamed over it): device, inode, size, modification time;
    None when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """A short hash of the VAE encoder's first and last layers (enough to tell two VAEs apart)."""
    digest = hashlib.sha256()
    for name, param in vae.named_parameters():
        if name.startswith(("encoder.conv_in.", "quant_conv.")):
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Avatar:
    """A prepared avatar (see the module docstring); [`Avatar.load`] reads one, [`Avatar.save`] writes one.

    Attributes:
        resolution: side of the aligned faces.
        fps: the output frame rate the avatar was prepared for, or ``"input"`` (the video's own timeline).
        num_frames: frames of the video.
        frame_shape: ``(H, W, 3)`` of the video's frames.
        matrices: per frame, the alignment matrix ``(2, 3)`` of the lip-synced face, or None.
        crops: aligned faces ``(F, R, R, 3)`` uint8 of the frames with a face (in frame order).
        masked_posteriors, reference_posteriors: VAE posteriors ``(F, 8, h, w)`` of the masked and whole faces.
        timestamps: seconds of every frame (``fps="input"`` only).
        time_base: the clock of the video's timestamps (``fps="input"`` only).
        video_path: the copy of the video in the folder, or None for frames in memory.
        frames: the frames ``(N, H, W, 3)`` when they were given in memory.
        vae: fingerprint of the VAE that encoded the faces.
        label: where the avatar came from (the video's file name).
    """

    resolution: int
    fps: float | str
    num_frames: int
    frame_shape: tuple[int, int, int]
    matrices: list[np.ndarray | None]
    crops: np.ndarray
    masked_posteriors: torch.Tensor
    reference_posteriors: torch.Tensor
    timestamps: np.ndarray | None = None
    time_base: Fraction | None = None
    video_path: str | None = None
    frames: np.ndarray | None = None
    vae: str = ""
    label: str = "avatar"

    def __post_init__(self) -> None:
        face_frames = [j for j, m in enumerate(self.matrices) if m is not None]
        self._row = {j: k for k, j in enumerate(face_frames)}
        self._video_identity: tuple[int, ...] | None = None  # of ``video_path`` when loaded (see frame_source)

    # ------------------------------------------------------------------ use
    def frame_source(self) -> FrameSource:
        """The avatar's video frames (re-readable), on the timeline it was prepared for."""
        if self.frames is not None:
            return open_frames(self.frames, 25 if self.fps == "input" else self.fps)
        self._check_video()
        source = open_timed_frames(self.video_path) if self.fps == "input" else open_frames(self.video_path, self.fps)
        if self._video_identity is None:
            return source
        decode = source.read

        def read() -> Iterator[np.ndarray]:
            # checked before and after the decoder opened the file: it read the video the avatar was loaded with
            self._check_video()
            frames = decode()
            try:
                first = next(frames, None)
                self._check_video()
                if first is not None:
                    yield first
                    yield from frames
            finally:
                frames.close()

        source.read = read
        return source

    def _check_video(self) -> None:
        """[`LatentSyncInputError`] when the video file of a loaded avatar is no longer the one it was loaded with
        (another run prepared the avatar again meanwhile): its frames would not match the faces."""
        if self._video_identity is not None and _identity(self.video_path) != self._video_identity:
            folder = os.path.dirname(self.video_path)
            raise LatentSyncInputError(f"the avatar {folder} was prepared again while this run used it (its video "
                                       "changed): run again to use the new avatar")

    def crop(self, frame: int) -> np.ndarray:
        """The aligned face of source frame ``frame``."""
        return self.crops[self._row[frame]]

    def posteriors(self, frames: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posteriors ``(len(frames), 8, h, w)`` of the masked and the whole faces of source frames
        ``frames``."""
        import torch  # deferred: torch (seconds), after the CLI checks

        rows = torch.tensor([self._row[int(j)] for j in frames], dtype=torch.long)
        return self.masked_posteriors[rows], self.reference_posteriors[rows]

    def check_compatible(self, resolution: int, vae: torch.nn.Module) -> None:
        """[`LatentSyncInputError`] when the avatar was prepared for another face resolution or another VAE."""
        if resolution != self.resolution:
            raise LatentSyncInputError(f"the avatar {self.label} was prepared for {self.resolution} px faces; this "
                                       f"pipeline uses {resolution} px: prepare it again with this pipeline")
        if self.vae and self.vae != vae_fingerprint(vae):
            raise LatentSyncInputError(f"the avatar {self.label} was prepared with another VAE: prepare it again "
                                       "with this pipeline")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, source_video: str | os.PathLike | None = None,
             overwrite: bool = True) -> str:
        """Write the avatar to the folder ``path`` (see [`check_avatar_destination`]: a new or empty folder, or one
        holding an earlier avatar, replaced when ``overwrite``). ``source_video`` is copied into it unless the
        frames are held in memory. Each file is written beside its name and renamed; ``avatar.json`` comes last.
        The folder is locked meanwhile ([`avatar_writer`]).

        Raises:
            LatentSyncInputError: the folder may not be written ([`check_avatar_destination`]), or another run is
                writing it right now.
        """
        path = os.fspath(path)
        if self.frames is None and source_video is None:
            raise LatentSyncInputError("an avatar of a video file needs the file (source_video)")
        check_avatar_destination(path, overwrite)
        with avatar_writer(path):
            check_avatar_destination(path, overwrite)  # again, now that no other run can write there
            self._write(path, source_video)
        return path

    def _write(self, path: str, source_video: str | os.PathLike | None) -> None:
        """Write the avatar's files into the folder ``path``, which this thread holds ([`save`])."""
        import torch  # deferred: torch (seconds), after the CLI checks
        from safetensors.torch import save_file

        config_path = os.path.join(path, AVATAR_CONFIG)
        if os.path.isfile(config_path):
            os.remove(config_path)  # the folder is not a complete avatar until the new JSON is in place
        video_name = None
        if self.frames is None:
            video_name = "video" + os.path.splitext(os.fspath(source_video))[1].lower()
            write_atomically(os.path.join(path, video_name), lambda tmp: shutil.copyfile(source_video, tmp))
            self.video_path = os.path.join(path, video_name)
            self._video_identity = _identity(self.video_path)  # as if loaded: see frame_source
        else:
            frames = {"frames": torch.from_numpy(np.ascontiguousarray(self.frames))}
            write_atomically(os.path.join(path, AVATAR_FRAMES), lambda tmp: save_file(frames, tmp))
        tensors = {"crops": torch.from_numpy(np.ascontiguousarray(self.crops)),
                   "masked_posteriors": self.masked_posteriors.contiguous().cpu(),
                   "reference_posteriors": self.reference_posteriors.contiguous().cpu()}
        write_atomically(os.path.join(path, AVATAR_TENSORS), lambda tmp: save_file(tensors, tmp))
        config: dict[str, Any] = {
            "version": AVATAR_VERSION, "label": self.label, "resolution": self.resolution, "fps": self.fps,
            "num_frames": self.num_frames, "frame_shape": list(self.frame_shape), "video": video_name,
            "vae": self.vae,
            "matrices": [None if m is None else np.asarray(m).tolist() for m in self.matrices],
            "timestamps": None if self.timestamps is None else [float(t) for t in self.timestamps],
            "time_base": None if self.time_base is None else str(self.time_base),
            "generation": secrets.token_hex(8),  # new at every write: readers tell a replaced avatar by it
        }

        def write_config(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(config, fh)

        write_atomically(config_path, write_config)
        # an earlier avatar's files this one does not use (its video of another type, or its frames): they would
        # only take space, and make the folder look like a mix of two avatars
        kept = {AVATAR_CONFIG, AVATAR_TENSORS, video_name or AVATAR_FRAMES}
        for name in os.listdir(path):
            if _is_avatar_file(name) and name not in kept and os.path.isfile(os.path.join(path, name)):
                os.remove(os.path.join(path, name))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Avatar:
        """Read an avatar folder written by [`Avatar.save`].

        A run that replaces the avatar meanwhile (see the module docstring) never gives a mix of the two: the
        JSON is read again after the tensors, and the folder read again when it changed.

        Raises:
            LatentSyncInputError: the folder is missing, incomplete (another run is writing it right now), or of
                another format version.
        """
        path = os.fspath(path)
        for _ in range(LOAD_ATTEMPTS):
            config_path, tensors_path, frames_path = avatar_files(path)
            try:
                text, video_identity = _read_bytes(config_path), _identity(frames_path)
                try:
                    avatar = cls._read(path, json.loads(text), tensors_path, frames_path)
                except LatentSyncInputError:
                    if _read_bytes(config_path) == text:
                        raise  # a damaged avatar, not one replaced meanwhile
                    continue
                unchanged = _read_bytes(config_path) == text and _identity(frames_path) == video_identity
            except FileNotFoundError:  # removed by a run that started to replace the avatar meanwhile
                unchanged = False
            if unchanged:  # no run replaced the avatar while it was read: its files belong together
                avatar._video_identity = video_identity
                return avatar
        avatar_files(path)  # one line when another run is writing it right now
        raise LatentSyncInputError(f"avatar {path} was replaced again and again while it was read: load it when "
                                   "the runs writing it have ended")

    @classmethod
    def _read(cls, path: str, config: Any, tensors_path: str, frames_path: str) -> Avatar:
        """The avatar of the folder ``path`` from its JSON ``config`` and its files (read by [`load`])."""
        from safetensors import SafetensorError  # deferred: with load_file, for its error
        from safetensors.torch import load_file  # deferred: torch (seconds), after the CLI checks

        if not isinstance(config, dict):
            raise LatentSyncInputError(f"avatar {path} has a damaged {AVATAR_CONFIG}: prepare it again")
        video_path = frames_path if config.get("video") else None

        def read(file: str, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
            try:
                tensors = load_file(file)
            except (SafetensorError, OSError) as exc:  # a truncated or overwritten file
                raise LatentSyncInputError(f"avatar {path} has an unreadable {os.path.basename(file)} "
                                           f"({first_line(exc)}): prepare it again") from None
            missing = [n for n in names if n not in tensors]
            if missing:
                raise LatentSyncInputError(f"avatar {path} has a damaged {os.path.basename(file)} (no "
                                           f"{', '.join(missing)}): prepare it again")
            return tensors

        tensors = read(tensors_path, ("crops", "masked_posteriors", "reference_posteriors"))
        frames = None if video_path else read(frames_path, ("frames",))["frames"].numpy()
        try:
            avatar = cls(
                resolution=int(config["resolution"]), fps=config["fps"], num_frames=int(config["num_frames"]),
                frame_shape=tuple(int(v) for v in config["frame_shape"]),
                matrices=[None if m is None else np.asarray(m, dtype=np.float64).reshape(2, 3)
                          for m in config["matrices"]],
                crops=tensors["crops"].numpy(), masked_posteriors=tensors["masked_posteriors"],
                reference_posteriors=tensors["reference_posteriors"],
                timestamps=None if config["timestamps"] is None else np.asarray(config["timestamps"], np.float64),
                time_base=None if config["time_base"] is None else Fraction(config["time_base"]),
                video_path=video_path, frames=frames, vae=config.get("vae", ""), label=config.get("label", path),
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            what = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else first_line(exc)
            raise LatentSyncInputError(f"avatar {path} has a damaged {AVATAR_CONFIG} ({what}): prepare it again") \
                from None
        avatar._check_consistent(path)
        return avatar

    def _check_consistent(self, path: str) -> None:
        """[`LatentSyncInputError`] when the JSON and the tensors of a loaded avatar disagree (files of two
        different avatars, a hand-edited JSON): using them would paste faces onto the wrong frames."""
        rows = len(self._row)
        r = self.resolution
        problems = []
        if self.num_frames < 1 or len(self.matrices) != self.num_frames:
            problems.append(f"{len(self.matrices)} alignment matrices for {self.num_frames} frames")
        if tuple(self.crops.shape) != (rows, r, r, 3):
            problems.append(f"face crops of shape {tuple(self.crops.shape)} for {rows} faces of {r} px")
        for name in ("masked_posteriors", "reference_posteriors"):
            shape = tuple(getattr(self, name).shape)
            if len(shape) != 4 or shape[0] != rows or shape[1] != 8:
                problems.append(f"{name} of shape {shape} for {rows} faces")
        if self.timestamps is not None and len(self.timestamps) != self.num_frames:
            problems.append(f"{len(self.timestamps)} timestamps for {self.num_frames} frames")
        if self.frames is not None and len(self.frames) != self.num_frames:
            problems.append(f"{len(self.frames)} stored frames for {self.num_frames} frames")
        if problems:
            raise LatentSyncInputError(f"avatar {path} is inconsistent ({problems[0]}): its files come from "
                                       "different avatars or were changed; prepare it again")

