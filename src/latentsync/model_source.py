"""Where models come from: local pipeline folders and Hub ids, the file names of the official releases, and the checks,
made before loading anything, that a model can be found (a folder with a pipeline in it, or a Hub id that is cached
or reachable): [`check_model_source`] for the pipeline a command runs, [`check_model_sources`] for the several
models a trainer, ``latentsync prepare`` or ``latentsync eval`` loads (named by their settings), and
[`check_hub_available`] for what must reach the Hub (uploads, checkpoints on the Hub).

Offline use is detected without waiting for the Hub's retries: ``HF_HUB_OFFLINE=1``, or a connection to the Hub's
host that fails within a few seconds. A cached model then loads with ``local_files_only=True`` (or, for the trainers,
with the whole process switched to offline mode by [`go_offline`]).
Importing this module imports neither torch nor huggingface_hub (about a second): the functions import the latter,
so that the command line reports bad input before paying for it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from .errors import LatentSyncInputError, ModelNotFoundError, first_line

logger = logging.getLogger(__name__)

OFFICIAL_UNET_FILE = "latentsync_unet.pt"
OFFICIAL_WHISPER_FILE = "whisper/tiny.pt"
OFFICIAL_SYNCNET_FILE = "stable_syncnet.pt"
OFFICIAL_VAE_ID = "stabilityai/sd-vae-ft-mse"
"""The official releases' files, and the VAE they are used with (a separate Hub repository)."""

PIPELINE_FILES = ("model_index.json", OFFICIAL_UNET_FILE)
"""A folder or Hub repository holds a pipeline when it has one of these: a saved diffusers pipeline, or an official
release."""

MAKE_TINY_HINT = "`latentsync make-tiny DIR` saves a small random-weight model for trying things out"

TRAINING_RUN_MARKS = ("checkpoints", "losses.jsonl")
"""What a training run's output folder holds (and a pipeline folder does not)."""

RUN_SETTINGS_FILE = "config.yaml"
"""A training run's settings, at the top of its folder (both trainers; U-Net runs of earlier versions wrote
``config.json``)."""

SYNCNET_RUN_MARKS = ("syncnet", "syncnet_best")
"""What only a SyncNet training run's folder holds (its final and best models)."""


def is_syncnet_run(folder: str | os.PathLike) -> bool:
    """Whether the training run folder ``folder`` is a SyncNet run's: it holds a SyncNet run's models, or its
    settings ([`RUN_SETTINGS_FILE`]) have the SyncNet trainer's ``model_preset`` (a run stopped before it saved a
    model)."""
    folder = os.fspath(folder)
    if any(os.path.exists(os.path.join(folder, name)) for name in SYNCNET_RUN_MARKS):
        return True
    try:  # a top-level key of the YAML the trainers write (read without a YAML parser: a core install has none)
        with open(os.path.join(folder, RUN_SETTINGS_FILE)) as fh:
            return any(line.startswith("model_preset:") for line in fh)
    except (OSError, UnicodeDecodeError):
        return False


@dataclass
class ModelSource:
    """A checked model: a local folder, or a Hub id (``cached`` on this machine; ``offline`` when the Hub cannot be
    reached, so loading must use the cache only)."""

    name: str
    is_folder: bool
    cached: bool = False
    offline: bool = False

    @property
    def local_files_only(self) -> bool:
        return self.is_folder or self.offline


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_is_offline() -> bool:
    """Whether offline mode is set (``HF_HUB_OFFLINE``), in the environment or in huggingface_hub's settings."""
    from huggingface_hub import constants  # deferred: a slow import (see the module docstring)


    return _env_true("HF_HUB_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def _hub_address(endpoint: str) -> tuple[str | None, int]:
    url = urlparse(endpoint)
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def hub_is_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host (``HF_ENDPOINT``) opens within ``timeout`` seconds (name lookup
    included), instead of letting a download retry with back-off for half a minute."""
    from huggingface_hub import constants  # deferred: a slow import (see the module docstring)

    return host_is_reachable(constants.ENDPOINT, timeout)


def host_is_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds (name lookup included)."""
    host, port = _hub_address(url)
    if not host:
        return False
    reachable = threading.Event()

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                reachable.set()
        except OSError:
            pass

    thread = threading.Thread(target=connect, name="latentsync-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)  # the name lookup has no timeout of its own: do not wait for it longer than this
    return reachable.is_set()


def hub_unreachable_reason() -> str | None:
    """Why the Hub cannot be used (offline mode, or no connection within a few seconds), or None when it can."""
    from huggingface_hub import constants  # deferred: a slow import (see the module docstring)

    if hub_is_offline():
        return "HF_HUB_OFFLINE is set"
    if not hub_is_reachable():
        return f"{_hub_address(constants.ENDPOINT)[0]} cannot be reached"
    return None


def download_unavailable_reason(url: str) -> str | None:
    """Why a file cannot be downloaded from ``url`` now (offline mode, or no connection to its host within a few
    seconds), or None when it can; for the models fetched by URL rather than from the Hub."""
    if hub_is_offline():
        return "HF_HUB_OFFLINE is set"
    if not host_is_reachable(url):
        return f"{_hub_address(url)[0] or url} cannot be reached"
    return None


def go_offline(reason: str) -> None:
    """Switch this process (and the processes it starts) to the Hub's offline mode: cached files load without the
    Hub libraries' retries."""
    from huggingface_hub import constants  # deferred: a slow import (see the module docstring)

    if not constants.HF_HUB_OFFLINE:
        logger.info("%s: using cached models only (offline mode)", reason)
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"


def _looks_like_path(name: str) -> bool:
    return (os.path.isabs(name) or name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/")
            or name.count("/") > 1)


def is_hub_id(source: str) -> bool:
    """Whether ``source`` reads as a Hub repository id (``name`` or ``org/name``) rather than a local path."""
    from huggingface_hub.errors import HFValidationError  # deferred: a slow import (see the module docstring)
    from huggingface_hub.utils import validate_repo_id  # deferred: as above

    if _looks_like_path(source):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def is_hub_cached(repo_id: str, filename: str | None = None, cache_dir: str | os.PathLike | None = None,
                  repo_type: str = "model") -> bool:
    """Whether the local Hugging Face cache holds ``filename`` of ``repo_id`` (any file of it when None); a
    ``repo_type="dataset"`` repository for datasets."""
    from huggingface_hub import constants, try_to_load_from_cache  # deferred: a slow import (see the module docstring)
    from huggingface_hub.file_download import repo_folder_name  # deferred: as above

    if filename is not None:
        return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, repo_type=repo_type), str)
    snapshots = os.path.join(os.fspath(cache_dir or constants.HF_HUB_CACHE),
                             repo_folder_name(repo_id=repo_id, repo_type=repo_type), "snapshots")
    return os.path.isdir(snapshots) and any(os.scandir(snapshots))


def model_file(source: str | os.PathLike, filename: str) -> str:
    """The local path of one weights file: ``source`` itself when it is a file, ``filename`` inside it when it is a
    folder (a local copy of the Hub repository), else ``filename`` downloaded from the Hub repository ``source``.

    Raises:
        FileNotFoundError: ``source`` is a folder without ``filename`` (one line naming both).
    """
    source = os.fspath(source)
    if os.path.isfile(source):
        return source
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{filename} not found in the folder {source}")
        return path
    from huggingface_hub import hf_hub_download  # deferred: a slow import (see the module docstring)

    return hf_hub_download(source, filename)


def check_not_training_run(folder: str | os.PathLike) -> None:
    """Refuse a training run's output folder where a pipeline is expected, saying where its pipeline is (one line,
    instead of diffusers' missing ``model_index.json``).

    Raises:
        ModelNotFoundError: ``folder`` holds a training run (checkpoints or a loss log) and no pipeline; for a SyncNet
            run the message says that its model is a SyncNet (for ``--syncnet`` and evaluation), not a pipeline.
    """
    folder = os.path.expanduser(os.fspath(folder))
    if not os.path.isdir(folder) or os.path.isfile(os.path.join(folder, "model_index.json")):
        return
    if not any(os.path.exists(os.path.join(folder, name)) for name in TRAINING_RUN_MARKS):
        return
    if is_syncnet_run(folder):
        model = next((os.path.join(folder, name) for name in ("syncnet_best", "syncnet")
                      if os.path.isdir(os.path.join(folder, name))), os.path.join(folder, "syncnet"))
        raise ModelNotFoundError(
            f"{folder} is a SyncNet training run, not a lip-sync pipeline: use its SyncNet {model} with --syncnet, "
            f"`latentsync eval syncnet-acc --model {model}` / `eval sync-conf --model {model}`, or as syncnet= of "
            "U-Net training; give --model a pipeline folder or Hub id")
    final = os.path.join(folder, "pipeline")
    hint = f"load {final} (its final weights), or " if os.path.isfile(os.path.join(final, "model_index.json")) else ""
    raise ModelNotFoundError(f"{folder} is a training run folder, not a pipeline: {hint}turn one of its checkpoints "
                             f"into a pipeline with `latentsync export-checkpoint {folder} OUTPUT`")


def syncnet_folder_problem(folder: str | os.PathLike, subfolder: str | None = None) -> str | None:
    """Why the local ``folder`` (its ``subfolder``) holds no StableSyncNet, saying what it holds instead (a U-Net, a
    pipeline, a training run: for a SyncNet run, where its model is); None when it holds one (a diffusers folder
    whose ``config.json`` names ``StableSyncNet``, or an official ``stable_syncnet.pt``). Reads only small files."""
    folder = os.path.expanduser(os.fspath(folder))
    inner = os.path.join(folder, subfolder or "")
    config = None
    try:
        with open(os.path.join(inner, "config.json")) as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        pass
    kind = config.get("_class_name") if isinstance(config, dict) else None
    if kind == "StableSyncNet" or os.path.isfile(os.path.join(inner, OFFICIAL_SYNCNET_FILE)):
        return None
    if kind:
        return f"it holds a {kind}, not a StableSyncNet"
    if any(os.path.exists(os.path.join(folder, name)) for name in TRAINING_RUN_MARKS):
        model = next((os.path.join(folder, name) for name in ("syncnet_best", "syncnet")
                      if os.path.isdir(os.path.join(folder, name))), None)
        return (f"it is a SyncNet training run folder: its model is {model}" if model is not None else
                "it is the folder of a U-Net training run, not a SyncNet")
    if any(os.path.isfile(os.path.join(inner, name)) for name in PIPELINE_FILES):
        return "it holds a lip-sync pipeline, not a SyncNet"
    return f"no StableSyncNet in it (no config.json naming one, no {OFFICIAL_SYNCNET_FILE})"


def check_syncnet_folder(setting: str, source: str | os.PathLike | None, subfolder: str | None = None) -> None:
    """Refuse, before anything loads, a local folder given as a SyncNet (``setting``, e.g. ``syncnet``) that holds
    none (see [`syncnet_folder_problem`]); files and Hub ids pass (their loaders check them).

    Raises:
        ModelNotFoundError: one line naming the setting and what the folder holds instead.
    """
    if source is None or not os.path.isdir(os.path.expanduser(os.fspath(source))):
        return
    problem = syncnet_folder_problem(source, subfolder)
    if problem is not None:
        raise ModelNotFoundError(f"{setting}={os.fspath(source)} is no SyncNet: {problem}")


def check_model_source(name: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                       local_files_only: bool = False) -> ModelSource:
    """Check that ``name`` names a loadable pipeline, without loading it.

    A local folder must hold ``model_index.json`` (a saved pipeline) or ``latentsync_unet.pt`` (an official
    release). A Hub id must be cached, or the Hub must be reachable and know it. Official releases also need their
    VAE, ``stabilityai/sd-vae-ft-mse``.

    Raises:
        ModelNotFoundError: a missing folder, a folder without a pipeline, an invalid or unknown Hub id, or a Hub id
            that is not cached while the Hub cannot be reached (the message says what to do).
    """
    from huggingface_hub.errors import HFValidationError  # deferred: a slow import (see the module docstring)
    from huggingface_hub.utils import validate_repo_id  # deferred: as above

    name = os.fspath(name)
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        check_not_training_run(path)
        if not any(os.path.isfile(os.path.join(path, f)) for f in PIPELINE_FILES):
            raise ModelNotFoundError(f"model folder {name} holds no pipeline (no {' or '.join(PIPELINE_FILES)}); "
                                     f"{MAKE_TINY_HINT}")
        return ModelSource(name, is_folder=True)
    if os.path.exists(path):
        raise ModelNotFoundError(f"model {name} is a file: give a pipeline folder or a Hub id")
    if _looks_like_path(name):
        raise ModelNotFoundError(f"model folder not found: {name}")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelNotFoundError(f"model {name} is neither a folder nor a valid Hub id (like org/name)") from None
    saved_pipeline = is_hub_cached(name, "model_index.json", cache_dir)
    pipeline_cached = saved_pipeline or is_hub_cached(name, OFFICIAL_UNET_FILE, cache_dir)
    vae_cached = saved_pipeline or is_hub_cached(OFFICIAL_VAE_ID, "config.json", cache_dir)  # official releases need it
    offline = local_files_only or hub_is_offline() or not hub_is_reachable()
    if pipeline_cached and vae_cached:
        return ModelSource(name, is_folder=False, cached=True, offline=offline)
    if offline:
        missing = OFFICIAL_VAE_ID if pipeline_cached else name
        raise ModelNotFoundError(f"model {missing} is not cached on this machine and the Hub cannot be reached "
                                 f"(offline): run once online to download it, or pass a local pipeline folder "
                                 f"(latentsync --model DIR); {MAKE_TINY_HINT}")
    problem = hub_repo_problem(name)
    if problem == "gated":
        raise ModelNotFoundError(f"model {name} is gated on the Hub: accept its conditions on its page and log in "
                                 "with `hf auth login`")
    if problem == "missing":
        raise ModelNotFoundError(f"unknown model {name}: no such folder here, and no such model on the Hub (or it "
                                 "is private: log in with `hf auth login`)")
    return ModelSource(name, is_folder=False, cached=False, offline=False)


def hub_repo_problem(name: str, repo_type: str = "model") -> str | None:
    """Ask the Hub about the repository ``name`` (a ``"model"`` or ``"dataset"``): ``"gated"`` (its conditions must
    be accepted), ``"missing"`` (no such repository, or a private one), or None (it is there, or the Hub did not
    answer: the download will report that)."""
    from huggingface_hub import HfApi  # deferred: a slow import (see the module docstring)
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError  # deferred: as above

    try:
        HfApi().repo_info(name, repo_type=repo_type, timeout=10)
    except GatedRepoError:  # a subclass of RepositoryNotFoundError
        return "gated"
    except RepositoryNotFoundError:
        return "missing"
    except Exception:  # noqa: BLE001 - any other failure to ask the Hub: the download will report it
        return None
    return None


def check_model_sources(sources: Mapping[str, str | tuple[str, str | None] | None]) -> None:
    """Check, before anything loads, that every model a trainer or ``latentsync prepare`` needs can be found: every
    local path must exist, and every Hub id must be cached when the Hub cannot be reached (the process then switches
    to offline mode, so that cached models load at once).

    Args:
        sources: setting name -> source (local path or Hub id), or ``(source, file inside it)``; None entries are
            skipped.

    Raises:
        ModelNotFoundError: one line naming every setting whose local path does not exist, or whose Hub id is not
            cached while the Hub cannot be reached, with what to do instead.
    """
    missing_paths, hub = [], {}
    for setting, value in sources.items():
        if value is None:
            continue
        source, filename = value if isinstance(value, tuple) else (value, None)
        source = os.fspath(source)
        if os.path.exists(os.path.expanduser(source)):
            continue
        if is_hub_id(source):
            hub[setting] = (source, filename)
        else:
            missing_paths.append(f"{setting}={source}")
    if missing_paths:
        raise ModelNotFoundError(f"not found: {', '.join(missing_paths)} (no such file or folder)")
    if not hub:
        return
    reason = hub_unreachable_reason()
    if reason is None:
        return
    go_offline(reason)
    uncached = [f"{setting}={source}" + (f" ({filename})" if filename else "")
                for setting, (source, filename) in hub.items() if not is_hub_cached(source, filename)]
    if uncached:
        raise ModelNotFoundError(
            f"no such local folder, and not in the Hugging Face cache while the Hub is unavailable ({reason}): "
            f"{', '.join(uncached)}; "
            "pass a local folder instead (e.g. " + uncached[0].split("=")[0] + "=DIR), or run once online to cache "
            "it (HF_HUB_OFFLINE=1 makes a missing model fail at once instead of after the Hub retries)")


class HubUnavailableError(LatentSyncInputError):
    """A command needs the Hugging Face Hub (to upload, or to download something not cached) and it cannot be
    reached."""


def check_hub_available(purpose: str, instead: str) -> None:
    """Refuse at once, before any work, a command that must talk to the Hub (an upload, a download of a training
    checkpoint) while the Hub cannot be reached (offline mode, or no connection within a few seconds).

    Args:
        purpose: what needs the Hub, e.g. ``push_to_hub=true (uploads to me/run)``.
        instead: what to do instead, e.g. ``train without push_to_hub and upload OUTPUT later``.

    Raises:
        HubUnavailableError: one line saying what needs the Hub, why it cannot be reached and what to do instead.
    """
    reason = hub_unreachable_reason()
    if reason is not None:
        raise HubUnavailableError(f"{purpose} needs the Hugging Face Hub, which is unavailable ({reason}): "
                                  f"{instead}")


@contextmanager
def loading(setting: str, source: str | os.PathLike | None) -> Iterator[None]:
    """Turn a loader's ``OSError`` (missing files, unknown repository) into a one-line [`ModelNotFoundError`] that
    names the setting."""
    try:
        yield
    except ModelNotFoundError:
        raise
    except OSError as exc:
        first = first_line(exc)
        raise ModelNotFoundError(f"cannot load {setting}={os.fspath(source) if source else source}: {first}") from exc
