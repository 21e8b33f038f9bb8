"""Where training clips come from: a folder of videos (searched recursively), one video file, or a Hugging Face
``datasets`` dataset whose ``video_column`` holds the mp4 bytes (``bytes``, a ``{"bytes", "path"}`` dict as written
by ``datasets.Video(decode=False)``, or a file path). Both training datasets read their clips through
[`ClipSource`]; clips are decoded with the project's ffmpeg reader (``datasets``' own video decoding needs
torchcodec, which is not required here).
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..media.constants import VIDEO_EXTENSIONS
from ..media.files import find_videos

SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    path = os.fspath(path)
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in SAVED_DATASET_FILES)


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
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"dataset {path} has no split {split!r} (splits: {', '.join(ds)})")
            return ds[split]
        return ds
    return datasets.load_dataset(path, split=split)


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
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
            self.files = [os.fspath(source)]
        elif isinstance(source, (str, os.PathLike)) and os.path.isdir(source) and not is_saved_dataset(source):
            folder = os.fspath(source)
            files = [os.path.join(folder, f) for f in find_videos(folder)]
            if files:
                self.files = files
            elif not _has_dataset_files(folder):
                raise ValueError(f"no video clips ({', '.join(VIDEO_EXTENSIONS)}) or dataset files in {source}")
        if self.files is None:
            self.rows = load_hf_dataset(source, split)
            if video_column not in self.rows.column_names:
                columns = ", ".join(self.rows.column_names)
                raise ValueError(f"dataset has no column {video_column!r} (columns: {columns})")
            if len(self.rows) == 0:
                raise ValueError("dataset has no rows")

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.rows)

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
