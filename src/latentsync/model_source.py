"""Where models come from: local pipeline folders and Hub ids, the file names of the official releases, and the check,
made before loading anything, that a model can be found (a folder with a pipeline in it, or a Hub id that is cached
or reachable).

Offline use is detected without waiting for the Hub's retries: ``HF_HUB_OFFLINE=1``, or a connection to the Hub's
host that fails within a few seconds. A cached model then loads with ``local_files_only=True``.
Importing this module imports neither torch nor huggingface_hub (about a second): the functions import the latter,
so that the command line reports bad input before paying for it.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlparse

from .errors import ModelNotFoundError

OFFICIAL_UNET_FILE = "latentsync_unet.pt"
OFFICIAL_WHISPER_FILE = "whisper/tiny.pt"
OFFICIAL_SYNCNET_FILE = "stable_syncnet.pt"
OFFICIAL_VAE_ID = "stabilityai/sd-vae-ft-mse"
"""The official releases' files, and the VAE they are used with (a separate Hub repository)."""

PIPELINE_FILES = ("model_index.json", OFFICIAL_UNET_FILE)
"""A folder or Hub repository holds a pipeline when it has one of these: a saved diffusers pipeline, or an official
release."""

MAKE_TINY_HINT = "`latentsync make-tiny DIR` saves a small random-weight model for trying things out"


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


def hub_is_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host (``HF_ENDPOINT``) opens within ``timeout`` seconds (name lookup
    included), instead of letting a download retry with back-off for half a minute."""
    from huggingface_hub import constants  # deferred: a slow import (see the module docstring)


    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
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


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/") or name.count("/") > 1


def _cached(repo_id: str, filename: str, cache_dir: str | os.PathLike | None) -> bool:
    from huggingface_hub import try_to_load_from_cache  # deferred: a slow import (see the module docstring)


    return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir), str)


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
    from huggingface_hub import HfApi  # deferred: a slow import (see the module docstring)
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError  # deferred: as above
    from huggingface_hub.utils import validate_repo_id  # deferred: as above

    name = os.fspath(name)
    path = os.path.expanduser(name)
    if os.path.isdir(path):
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
    saved_pipeline = _cached(name, "model_index.json", cache_dir)
    pipeline_cached = saved_pipeline or _cached(name, OFFICIAL_UNET_FILE, cache_dir)
    vae_cached = saved_pipeline or _cached(OFFICIAL_VAE_ID, "config.json", cache_dir)  # official releases need it
    offline = local_files_only or hub_is_offline() or not hub_is_reachable()
    if pipeline_cached and vae_cached:
        return ModelSource(name, is_folder=False, cached=True, offline=offline)
    if offline:
        missing = OFFICIAL_VAE_ID if pipeline_cached else name
        raise ModelNotFoundError(f"model {missing} is not cached on this machine and the Hub cannot be reached "
                                 f"(offline): run once online to download it, or pass a local pipeline folder "
                                 f"(latentsync --model DIR); {MAKE_TINY_HINT}")
    try:
        HfApi().model_info(name, timeout=10)
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"unknown model {name}: no such folder here, and no such model on the Hub (or it "
                                 "is private: log in with `hf auth login`)") from None
    except GatedRepoError:
        raise ModelNotFoundError(f"model {name} is gated on the Hub: accept its conditions on its page and log in "
                                 "with `hf auth login`") from None
    except Exception:  # noqa: BLE001 - any other failure to ask the Hub: the download will report it
        pass
    return ModelSource(name, is_folder=False, cached=False, offline=False)
