"""The prepared clips as a sharded Hugging Face ``datasets`` dataset: writing, loading, pushing, decoding a row."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from ... import hub
from ...media.audio import load_audio
from ...media.constants import SAMPLE_RATE
from ...media.constants import VIDEO_FPS as FPS
from ...media.video import iter_frames
from .config import PrepareConfig


def dataset_features(resolution: int | None = None):
    """Columns of a prepared dataset: the clip as mp4 bytes (H.264 + AAC, 25 fps, aligned faces) and metadata."""
    import datasets  # deferred: datasets is optional (data extra) and slow to import

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
    import datasets  # deferred: datasets is optional (data extra) and slow to import

    clips_root = os.path.join(output_dir, "work", "clips")
    target = os.path.join(output_dir, "dataset")
    cache = os.path.join(output_dir, "work", "hf_cache")
    shutil.rmtree(cache, ignore_errors=True)
    features = dataset_features()
    records = [r for r in records if r.get("clips")]
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if records:
            ds = datasets.Dataset.from_generator(
                _rows, features=features, cache_dir=cache,
                gen_kwargs={"records": records, "clips_root": clips_root, "resolution": config.resolution},
            )
        else:
            ds = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
        if len(ds):
            ds.save_to_disk(tmp, max_shard_size=config.max_shard_size)
        else:
            ds.save_to_disk(tmp, num_shards=1)
        del ds
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:  # a failed write (a full disk) leaves neither half a dataset nor its cache
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return target


def load_prepared(output_dir: str):
    """The ``datasets.Dataset`` written by [`prepare_dataset`] (``output_dir`` or its ``dataset`` folder)."""
    import datasets  # deferred: datasets is optional (data extra) and slow to import

    path = os.path.join(output_dir, "dataset") if os.path.isdir(os.path.join(output_dir, "dataset")) else output_dir
    return datasets.load_from_disk(path)


def push_prepared(output_dir: str, repo_id: str, private: bool | None = None, max_shard_size: str = "500MB",
                  token: str | None = None) -> str:
    """Upload a prepared dataset to the Hub dataset repo ``repo_id``: parquet shards of at most ``max_shard_size``
    in ``data/`` (what ``datasets.load_dataset(repo_id)`` and the dataset viewer read) and a dataset card with the
    preparation summary (``summary.md``). Returns the repo id."""
    from datasets.utils.py_utils import convert_file_size_to_int  # deferred: datasets is optional (data extra)

    ds = load_prepared(output_dir)
    num_shards = max(1, -(-int(ds.data.nbytes) // convert_file_size_to_int(max_shard_size)))
    summary_path = os.path.join(output_dir, "summary.md")
    summary = open(summary_path, encoding="utf-8").read() if os.path.isfile(summary_path) else "(no summary.md)"
    resolution = int(ds[0]["resolution"]) if len(ds) else None
    with tempfile.TemporaryDirectory(prefix="latentsync-push-") as tmp:
        os.makedirs(os.path.join(tmp, "data"))
        for index in range(num_shards):
            shard = ds.shard(num_shards, index, contiguous=True)
            shard.to_parquet(os.path.join(tmp, "data", f"train-{index:05d}-of-{num_shards:05d}.parquet"))
        card = hub.dataset_card(repo_id, len(ds), summary, resolution)
        return hub.push_folder(tmp, repo_id, card=card, repo_type="dataset", private=private, token=token,
                               commit_message=f"{len(ds)} prepared clips (latentsync prepare)")


def decode_clip(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(T, H, W, 3)`` uint8 and 16 kHz mono audio of a clip stored as mp4 bytes."""
    with tempfile.TemporaryDirectory(prefix="latentsync-clip-") as tmp:
        path = os.path.join(tmp, "clip.mp4")
        with open(path, "wb") as f:
            f.write(data)
        frames = np.stack(list(iter_frames(path, fps=None)))
        audio = load_audio(path, SAMPLE_RATE)
    return frames, audio
