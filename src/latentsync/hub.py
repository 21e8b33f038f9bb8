"""What the Hugging Face Hub sees of our models and data: model and dataset cards, the loader file that lets plain
diffusers load a saved pipeline, and the one function every upload goes through ([`push_folder`]).

A folder written by [`LatentSyncPipeline.save_pretrained`] holds a two-line ``pipeline.py`` that imports
[`LatentSyncPipeline`] from the installed package, and its ``model_index.json`` names that file as the pipeline
class (``"_class_name": ["pipeline", "LatentSyncPipeline"]``), so that

    DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)

works in a program that never imports latentsync (diffusers imports the file, which imports the package).
``LatentSyncPipeline.from_pretrained`` recognises the file by its exact text and loads without
``trust_remote_code``; any other ``pipeline.py`` still needs the caller's explicit trust.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from filelock import FileLock
from huggingface_hub import DatasetCard, DatasetCardData, HfApi, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from .model_source import is_hub_id

if TYPE_CHECKING:  # the pipeline module imports this one
    from .pipeline import LatentSyncPipeline

logger = logging.getLogger(__name__)

LOADER_MODULE = "pipeline"
LOADER_FILE = f"{LOADER_MODULE}.py"
LOADER_SOURCE = '''\
"""Loader for plain diffusers: `DiffusionPipeline.from_pretrained(<this folder or repo>, trust_remote_code=True)`
imports this file, which takes LatentSyncPipeline from the installed latentsync package (pip install latentsync)."""

from latentsync.pipeline import LatentSyncPipeline  # noqa: F401
'''
CARD_NAME = "README.md"
# the official LatentSync weights are released under the CreativeML OpenRAIL++-M licence; models derived from them
# carry it on, and our own code (and random-weight test models) is Apache-2.0
OFFICIAL_LICENSE = "openrail++"
CODE_LICENSE = "apache-2.0"
PIPELINE_TAG = "video-to-video"
TAGS = ["lip-sync", "latentsync", "talking-face", "audio-to-video"]


def source_url() -> str:
    """Where the package's source lives (``Repository`` in pyproject's ``[project.urls]``)."""
    try:
        for entry in metadata.metadata("latentsync").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() == "repository":
                return url.strip()
    except metadata.PackageNotFoundError:  # a source checkout on sys.path without installation
        pass
    return "latentsync"


def install_command(extras: str = "") -> str:
    """The ``pip install`` line for this package (from its repository)."""
    url = source_url()
    name = f"latentsync[{extras}]" if extras else "latentsync"
    return f'pip install "{name} @ git+{url}"' if url.startswith("http") else f'pip install "{name}"'


def hub_id(source: str | os.PathLike | None) -> str | None:
    """``source`` if it names a Hub repository (``owner/name`` and no such local path), else None."""
    if source is None:
        return None
    text = os.fspath(source)
    return text if "/" in text and is_hub_id(text) and not os.path.exists(text) else None


# ---------------------------------------------------------------------------------------------------- loader file
def write_loader(folder: str | os.PathLike) -> None:
    """Make a saved pipeline folder loadable by plain diffusers: write ``pipeline.py`` and point
    ``model_index.json``'s ``_class_name`` at it."""
    index_path = os.path.join(folder, "model_index.json")
    with open(index_path, encoding="utf-8") as fh:
        index = json.load(fh)
    index["_class_name"] = [LOADER_MODULE, "LatentSyncPipeline"]
    with open(index_path, "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=2, sort_keys=True)
        fh.write("\n")
    with open(os.path.join(folder, LOADER_FILE), "w", encoding="utf-8") as fh:
        fh.write(LOADER_SOURCE)


def has_own_loader(source: str | os.PathLike, **hub_kwargs: Any) -> bool:
    """Whether the folder or Hub repo ``source`` holds exactly our ``pipeline.py`` (so loading it runs no foreign
    code). ``hub_kwargs``: ``revision``, ``cache_dir``, ``token``, ``local_files_only``."""
    path = os.path.join(source, LOADER_FILE)
    if not os.path.isdir(source):
        if hub_id(source) is None:
            return False
        kwargs = {k: v for k, v in hub_kwargs.items() if k in ("revision", "cache_dir", "token", "local_files_only")
                  and v is not None}
        try:
            path = hf_hub_download(os.fspath(source), LOADER_FILE, **kwargs)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return False
        except Exception as exc:  # noqa: BLE001 - offline, gated, missing: diffusers reports it properly next
            logger.debug("could not read %s of %s: %s", LOADER_FILE, source, exc)
            return False
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as fh:
        return fh.read() == LOADER_SOURCE


def loader_lock() -> FileLock:
    """A lock, across processes, for loading a pipeline through its loader file. diffusers copies the file into its
    modules cache (``HF_MODULES_CACHE``, one path for every folder's ``pipeline.py``) and imports it from there at
    every load, so processes that load at once (``accelerate launch``) could import another one's half-written copy.
    """
    from diffusers.utils.constants import HF_MODULES_CACHE  # deferred: diffusers is slow to import (only loads use it)

    os.makedirs(HF_MODULES_CACHE, exist_ok=True)
    return FileLock(os.path.join(HF_MODULES_CACHE, "latentsync-loader.lock"))


# ---------------------------------------------------------------------------------------------------- cards
def _usage(repo_or_path: str) -> str:
    return f"""```bash
{install_command()}
```

```python
import torch
from diffusers import DiffusionPipeline

# trust_remote_code lets diffusers import this repository's two-line pipeline.py, which takes the pipeline class
# from the installed latentsync package (`from latentsync import LatentSyncPipeline` works the same way)
pipe = DiffusionPipeline.from_pretrained("{repo_or_path}", trust_remote_code=True)
pipe.to("cuda", torch.float16)  # or stay on the CPU in float32
out = pipe(video="face.mp4", audio="speech.wav", output_path="synced.mp4",
           generator=torch.Generator().manual_seed(1247))
print(out.path, out.num_frames)
```

Or from the command line: `latentsync --model {repo_or_path} --video face.mp4 --audio speech.wav --output synced.mp4`.
"""


_INTENDED_USE = ("Intended use: dubbing and lip sync of consenting speakers. Do not use it to impersonate people or "
                 "to deceive; label generated video as such.")


def _training_section(training: dict[str, Any] | None) -> str:
    if not training:
        return ""
    rows = "\n".join(f"| {k} | {v} |" for k, v in training.items() if v is not None)
    return f"\n## Training\n\n| setting or result | value |\n|---|---|\n{rows}\n"


def _license(base_model: str | None, random_weights: bool) -> str:
    return CODE_LICENSE if random_weights and base_model is None else OFFICIAL_LICENSE


def pipeline_card(
    pipe: "LatentSyncPipeline",
    repo_or_path: str,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    training: dict[str, Any] | None = None,
) -> ModelCard:
    """Model card of a saved pipeline: Hub metadata (library, task, licence, base model, datasets) and a usage
    snippet that loads ``repo_or_path`` with plain diffusers; ``training`` (setting -> value) adds a table."""
    unet = pipe.unet.config
    n_params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    random_weights = n_params < 10  # the tiny test models
    data = ModelCardData(
        library_name="diffusers", pipeline_tag=PIPELINE_TAG, license=_license(base_model, random_weights),
        base_model=base_model, datasets=list(datasets) if datasets else None,
        tags=[*TAGS, "diffusers:LatentSyncPipeline"],
    )
    warning = ("\n**Random weights** (a tiny test model): it runs the whole method, but the mouths it draws are "
               "noise.\n" if random_weights else "")
    origin = f"Derived from [{base_model}](https://huggingface.co/{base_model}).\n" if hub_id(base_model) else ""
    body = f"""
# LatentSync pipeline

Lip sync with audio-conditioned latent diffusion ([LatentSync](https://github.com/bytedance/LatentSync)), saved by
the [latentsync]({source_url()}) library. Give it a talking-face video and a speech track: it regenerates the mouth
region so the lips follow the speech.
{warning}{origin}
- U-Net: {n_params:.1f} M parameters, temporal layers `{unet.motion_modules}`, audio cross-attention width
  {unet.cross_attention_dim}
- Face resolution: {pipe.config.resolution} px; output at 25 fps; scheduler `{type(pipe.scheduler).__name__}`

## Use

{_usage(repo_or_path)}{_training_section(training)}
{_INTENDED_USE}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def adapter_card(
    repo_or_path: str,
    base_model: str | None,
    rank: int,
    target_modules: Any,
    datasets: Sequence[str] | None = None,
    training: dict[str, Any] | None = None,
) -> ModelCard:
    """Model card of a LoRA adapter of the U-Net, loaded with ``pipe.load_lora_weights``."""
    data = ModelCardData(
        library_name="diffusers", pipeline_tag=PIPELINE_TAG, license=OFFICIAL_LICENSE, base_model=base_model,
        base_model_relation="adapter" if base_model else None, datasets=list(datasets) if datasets else None,
        tags=[*TAGS, "lora"],
    )
    base = base_model or "<the pipeline it was trained on>"
    body = f"""
# LatentSync U-Net LoRA

A LoRA adapter (rank {rank}, on `{target_modules}`) of the LatentSync U-Net, trained with the
[latentsync]({source_url()}) library, in diffusers' LoRA format (`pytorch_lora_weights.safetensors`, keys `unet.*`).

## Use

```bash
{install_command()}
```

```python
import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{base}", trust_remote_code=True)
pipe.load_lora_weights("{repo_or_path}", adapter_name="mine")
pipe.set_adapters(["mine"], adapter_weights=[0.8])  # optional: strength
out = pipe(video="face.mp4", audio="speech.wav", output_path="synced.mp4")
pipe.unload_lora_weights()                           # back to the base model
```
{_training_section(training)}
{_INTENDED_USE}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def syncnet_card(repo_or_path: str, base_model: str | None = None, datasets: Sequence[str] | None = None,
                 training: dict[str, Any] | None = None) -> ModelCard:
    """Model card of a trained StableSyncNet (the lip-sync expert used as a training loss and for evaluation)."""
    data = ModelCardData(library_name="diffusers", license=OFFICIAL_LICENSE if base_model else CODE_LICENSE,
                         base_model=base_model, datasets=list(datasets) if datasets else None,
                         tags=["lip-sync", "latentsync", "syncnet"])
    body = f"""
# StableSyncNet

Audio-visual sync expert (LatentSync's StableSyncNet), trained with the [latentsync]({source_url()}) library.

```python
from latentsync.models import StableSyncNet

syncnet = StableSyncNet.from_pretrained("{repo_or_path}")
```

Use it as the SyncNet loss of U-Net training (`syncnet={repo_or_path}`) or to score videos
(`latentsync eval sync-conf out.mp4 --model {repo_or_path}`).
{_training_section(training)}"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def dataset_card(repo_id: str, num_clips: int, summary_table: str, resolution: int | None = None) -> DatasetCard:
    """Dataset card of a ``latentsync prepare`` training set (aligned clips as mp4 bytes, with metadata)."""
    data = DatasetCardData(tags=["lip-sync", "latentsync", "talking-face", "video"],
                           task_categories=["video-classification"],
                           configs=[{"config_name": "default", "data_files": [{"split": "train",
                                                                              "path": "data/train-*"}]}])
    size = f"{resolution} px " if resolution else ""
    body = f"""
# Aligned talking-face clips for LatentSync training

{num_clips} clips of {size}aligned faces at 25 fps with 16 kHz audio (H.264 + AAC mp4 bytes in the `video` column),
made by `latentsync prepare` of the [latentsync]({source_url()}) library, with their source, time span,
audio-visual offset and quality score.

```python
from datasets import load_dataset

ds = load_dataset("{repo_id}", split="train")
```

Train on it with `train/train_unet.py ... train_data={repo_id}`.

## What was kept and dropped

{summary_table}
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")


# ---------------------------------------------------------------------------------------------------- uploads
def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    card: ModelCard | DatasetCard | None = None,
    repo_type: str = "model",
    path_in_repo: str | None = None,
    commit_message: str = "Upload with latentsync",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    allow_patterns: list[str] | str | None = None,
    delete_patterns: list[str] | str | None = None,
) -> str:
    """Upload ``folder`` to the Hub repo ``repo_id`` (created when missing) in one commit, with ``card`` written as its
    ``README.md`` first; returns the repo id. Every upload of the package goes through here (pipelines, converted
    releases, LoRA adapters, SyncNets, training checkpoints, prepared datasets)."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True).repo_id
    if card is not None:
        card.save(os.path.join(folder, CARD_NAME))
    api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), path_in_repo=path_in_repo,
                      repo_type=repo_type, commit_message=commit_message, revision=revision, create_pr=create_pr,
                      allow_patterns=allow_patterns, delete_patterns=delete_patterns)
    where = f"{repo_id}/{path_in_repo}" if path_in_repo else repo_id
    prefix = "datasets/" if repo_type == "dataset" else ""
    logger.info("uploaded %s to https://huggingface.co/%s%s", folder, prefix, where)
    return repo_id
