"""Where training clips come from: a folder of videos (searched recursively), one video file, or a Hugging Face
``datasets`` dataset whose ``video_column`` holds the mp4 bytes (``bytes``, a ``{"bytes", "path"}`` dict as written
by ``datasets.Video(decode=False)``, or a file path). Both training datasets read their clips through
[`ClipSource`]; clips are decoded with the project's ffmpeg reader (``datasets``' own video decoding needs
torchcodec, which is not required here).
"""

from __future__ import annotations

import difflib
import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import LatentSyncInputError, first_line
from ..media.constants import VIDEO_EXTENSIONS, VIDEO_FPS
from ..media.files import find_videos
from ..media.video import probe_video
from ..model_source import go_offline, hub_repo_problem, hub_unreachable_reason, is_hub_cached, is_hub_id

SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")
PREPARE_MARKER = "prepare_config.json"  # written by ``latentsync prepare`` at the top of its output folder


class TrainingDataError(LatentSyncInputError):
    """The training data holds no clip, or none that can be used."""


@dataclass
class ClipSourceInfo:
    """What a training source holds, for the start-of-run summary: the number of clips, the frame size of the first
    one (``(width, height)``, None when it cannot be read) and the total duration when the source records it."""

    num_clips: int
    frame_size: tuple[int, int] | None
    seconds: float | None

    def describe(self, source: Any) -> str:
        text = f"{self.num_clips} clips"
        if self.seconds is not None:
            text += f", {self.seconds:.1f} s"
        return f"{text} ({source if isinstance(source, (str, os.PathLike)) else type(source).__name__})"

    def check_aligned_faces(self, source: Any, setting: str = "train_data") -> None:
        """Raise [`TrainingDataError`] when the clips are not aligned faces: those are square (``latentsync prepare``
        writes 256 x 256 px), so a first clip of another shape is a folder of raw videos (whole frames, which
        training would squash into squares)."""
        if self.frame_size is None or self.frame_size[0] == self.frame_size[1]:
            return
        w, h = self.frame_size
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "DATA"
        raise TrainingDataError(
            f"{setting}={name} holds videos of {w} x {h} px, not aligned face clips (square, e.g. 256 x 256): make "
            f"them with `latentsync prepare {name} PREPARED` and train on PREPARED")


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    path = os.fspath(path)
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in SAVED_DATASET_FILES)


def is_dataset_cached(repo_id: str) -> bool:
    """Whether this machine holds Hub dataset ``repo_id`` from an earlier download: its files in the Hugging Face
    cache, or the dataset ``datasets`` built from them (which ``datasets`` then loads in offline mode)."""
    import datasets  # deferred: datasets is optional (train/data extras) and slow to import
    from datasets.naming import camelcase_to_snakecase  # deferred: as above

    if is_hub_cached(repo_id, repo_type="dataset"):
        return True
    parts = repo_id.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    built = os.path.join(os.path.expanduser(str(datasets.config.HF_DATASETS_CACHE)), "___".join(parts))
    return any(os.path.isdir(p) for p in glob.glob(os.path.join(built, "*", "*", "*")))


def _near_miss(path: str) -> str:
    """``; did you mean X`` when the folder of ``path`` holds a name close to its last part, else empty."""
    folder, base = os.path.split(os.path.normpath(path))
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return ""
    close = difflib.get_close_matches(base, names, n=1)
    return f"; did you mean {os.path.join(folder, close[0])}?" if close else ""


def check_clip_source(source: Any, setting: str | None = "train_data") -> None:
    """Check, before any model loads, that the training or evaluation data ``source`` can be found: a local path
    must exist, and a Hub dataset id must be cached while the Hub cannot be reached (the process then switches to
    offline mode, so that ``datasets`` loads the cached copy at once) or, online, be known to the Hub. Other sources
    (a ``datasets.Dataset``) pass.

    Raises:
        TrainingDataError: one line naming ``setting`` (the option, e.g. ``--data``) and the source, why it cannot be
            used and what to do instead.
    """
    if not isinstance(source, (str, os.PathLike)) or os.path.exists(os.fspath(source)):
        return
    name = os.fspath(source)
    label = f"{setting}={name}" if setting else name
    parent = os.path.dirname(name)
    if not is_hub_id(name) or (parent and os.path.isdir(parent)):  # "prepared/datasett": a local path, mistyped
        near = _near_miss(name)  # a typo, rather than a `latentsync prepare` run that kept no clip
        raise TrainingDataError(f"data not found: {label} (no such file or folder{near})"
                                f"{'' if near else _prepare_hint(name)}")
    reason = hub_unreachable_reason()
    if reason is not None:
        if not is_dataset_cached(name):
            raise TrainingDataError(
                f"data not found: {label} is no local file or folder, and no Hub dataset cached on this machine while "
                f"the Hub cannot be reached ({reason}): pass a local folder (e.g. a `latentsync prepare` output) or "
                "run once online to cache the dataset")
        go_offline(reason)
        import datasets  # deferred: optional and slow to import; it read the offline setting when it was imported

        datasets.config.HF_HUB_OFFLINE = True
        return
    problem = hub_repo_problem(name, "dataset")
    if problem == "gated":
        raise TrainingDataError(f"{label} is a gated Hub dataset: accept its conditions on its page and log in with "
                                "`hf auth login`")
    if problem == "missing":
        raise TrainingDataError(f"data not found: {label} is no local file or folder, and no dataset on the Hub (or "
                                "a private one: log in with `hf auth login`)")


def load_hf_dataset(source: Any, split: str):
    """One split of a ``datasets`` source: a ``Dataset``, a ``DatasetDict``, a ``save_to_disk`` folder, or anything
    ``datasets.load_dataset`` accepts (Hub id, parquet folder)."""
    import datasets  # deferred: datasets is optional (train/data extras) and slow to import

    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise ValueError(f"dataset has no split {split!r} (splits: {', '.join(source)})")
        return source[split]
    if isinstance(source, datasets.Dataset):
        return source
    path = os.fspath(source)
    if is_saved_dataset(path):
        try:
            ds = datasets.load_from_disk(path)
        except IndexError:  # saved without any data file: datasets cannot open it
            raise TrainingDataError(f"{path} holds no clips (a dataset saved without data files)") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"dataset {path} has no split {split!r} (splits: {', '.join(ds)})")
            return ds[split]
        return ds
    try:
        return datasets.load_dataset(path, split=split)
    except datasets.exceptions.DatasetNotFoundError as exc:  # e.g. a private Hub dataset without a login
        first = first_line(exc)
        raise TrainingDataError(f"cannot load the dataset {path}: {first}") from exc


def _prepare_hint(source: Any) -> str:
    """For a ``dataset`` folder inside a `latentsync prepare` output: where to read why it holds no clip."""
    if not isinstance(source, (str, os.PathLike)):
        return ""
    parent = os.path.dirname(os.path.abspath(os.fspath(source)))
    if not os.path.isfile(os.path.join(parent, PREPARE_MARKER)):
        return ""
    return f"; `latentsync prepare` kept no clip there: see {os.path.join(parent, 'summary.md')}"


def _has_dataset_files(folder: str) -> bool:
    return any(glob.glob(os.path.join(folder, "**", f"*.{ext}"), recursive=True) for ext in ("parquet", "arrow"))


class ClipSource:
    """The clips of a training source (see the module docstring), listed once and opened one at a time.

    Args:
        source: folder of videos, one video file, a ``datasets.Dataset``/``DatasetDict``, a ``save_to_disk``
            folder, or anything ``datasets.load_dataset`` accepts.
        split, video_column: which split and column of a ``datasets`` source hold the clips.
    """

    def __init__(self, source: Any, split: str = "train", video_column: str = "video"):
        self.video_column = video_column
        self.files: list[str] | None = None
        self.rows = None
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(os.path.join(source, PREPARE_MARKER)):
            prepared = os.path.join(source, "dataset")  # the output folder of `latentsync prepare`: its dataset
            if not is_saved_dataset(prepared):
                raise TrainingDataError(f"{source} holds no prepared dataset (no {prepared}): `latentsync prepare` "
                                        f"kept no clip or did not finish; see {os.path.join(source, 'summary.md')}")
            source = prepared
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
            self.files = [os.fspath(source)]
        elif isinstance(source, (str, os.PathLike)) and os.path.isdir(source) and not is_saved_dataset(source):
            folder = os.fspath(source)
            files = [os.path.join(folder, f) for f in find_videos(folder)]
            if files:
                self.files = files
            elif not _has_dataset_files(folder):
                raise TrainingDataError(f"no video clips ({', '.join(VIDEO_EXTENSIONS)}) or dataset files in {source}")
        elif isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
            check_clip_source(source, None)
        if self.files is None:
            self.rows = load_hf_dataset(source, split)
            if video_column not in self.rows.column_names:
                columns = ", ".join(self.rows.column_names)
                raise TrainingDataError(f"dataset has no column {video_column!r} (columns: {columns})")
            if len(self.rows) == 0:
                name = source if isinstance(source, (str, os.PathLike)) else "the dataset"
                raise TrainingDataError(f"{name} holds no clips (0 rows){_prepare_hint(name)}")

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.rows)

    def info(self) -> ClipSourceInfo:
        """Number of clips, frame size of the first one, and total duration when the dataset records it (the
        ``num_frames`` column of a prepared dataset)."""
        try:
            with self.local_file(0) as path:
                video = probe_video(path)
            size = (video.width, video.height)
        except (LatentSyncInputError, ValueError, OSError):
            size = None
        seconds = None
        if self.rows is not None and "num_frames" in self.rows.column_names:
            seconds = float(sum(self.rows["num_frames"])) / VIDEO_FPS
        return ClipSourceInfo(len(self), size, seconds)

    def name(self, index: int) -> str:
        """Readable name of clip ``index`` (its file, or its row) for messages."""
        return self.files[index] if self.files is not None else f"row {index}"

    def key(self, index: int) -> str:
        """Stable identity of clip ``index`` (its file, or the dataset's fingerprint and the row), for caches."""
        if self.files is not None:
            return self.files[index]
        return f"{getattr(self.rows, '_fingerprint', 'dataset')}/{index}"

    @contextmanager
    def local_file(self, index: int) -> Iterator[str]:
        """A path ffmpeg can read for clip ``index``: its file, or the row's mp4 bytes in a temporary file."""
        if self.files is not None:
            yield self.files[index]
            return
        value = self.rows[index][self.video_column]
        data = value.get("bytes") if isinstance(value, dict) else value
        path = value.get("path") if isinstance(value, dict) else (value if isinstance(value, str) else None)
        if isinstance(data, (bytes, bytearray)):
            with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
                tmp.write(data)
                tmp.flush()
                yield tmp.name
        elif path and os.path.isfile(path):
            yield path
        else:
            raise ValueError(f"row {index}: column {self.video_column!r} holds neither mp4 bytes nor a file path")
