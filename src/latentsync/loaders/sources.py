"""Where a model comes from (a local file or folder, the Hugging Face cache, or the Hub), checked before loading.

Loading a Hub id that is not cached on a machine without network makes the Hub libraries retry for about 30 s and
then fail with a message about a missing ``config.json``. Commands that load several models (the trainers,
``latentsync prepare``) call [`check_model_sources`] first: every local path must exist, and every Hub id must be
cached when the Hub cannot be reached. When the Hub is unreachable the process switches to offline mode, so cached
models load at once instead of after the retries.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from urllib.parse import urlparse

from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

from ..errors import LatentSyncInputError

logger = logging.getLogger(__name__)

HUB_CONNECT_TIMEOUT = 3.0


class ModelSourceError(LatentSyncInputError):
    """A model named in the settings cannot be found: no such local path, or a Hub id that is neither cached nor
    reachable."""


def is_hub_id(source: str) -> bool:
    """Whether ``source`` reads as a Hub repository id (``name`` or ``org/name``) rather than a local path."""
    if os.path.isabs(source) or source.startswith((".", "~")) or "\\" in source:
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def is_hub_cached(repo_id: str, filename: str | None = None) -> bool:
    """Whether the local Hugging Face cache holds ``filename`` of ``repo_id`` (any file of it when None)."""
    if filename is not None:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    snapshots = os.path.join(hub_constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type="model"),
                             "snapshots")
    return os.path.isdir(snapshots) and any(os.scandir(snapshots))


@lru_cache(maxsize=1)
def _probe_hub(endpoint: str) -> str | None:
    parsed = urlparse(endpoint)
    host = parsed.hostname or endpoint
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError as exc:
        return f"{host} cannot be reached: {exc.strerror or exc}"
    return None


def hub_unreachable_reason() -> str | None:
    """Why the Hub cannot be used (offline mode, or no connection within a few seconds), or None when it can.
    Asked once per process and endpoint."""
    if hub_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return _probe_hub(hub_constants.ENDPOINT)


def go_offline(reason: str) -> None:
    """Switch this process (and the processes it starts) to the Hub's offline mode: cached files load without the
    Hub libraries' retries."""
    if not hub_constants.HF_HUB_OFFLINE:
        logger.info("%s: using cached models only (offline mode)", reason)
    hub_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"


def check_model_sources(sources: Mapping[str, str | tuple[str, str | None] | None]) -> None:
    """Check, before anything loads, that every model of ``sources`` can be found.

    Args:
        sources: setting name -> source (local path or Hub id), or ``(source, file inside it)``; None entries are
            skipped.

    Raises:
        ModelSourceError: one line naming every setting whose local path does not exist, or whose Hub id is not
            cached while the Hub cannot be reached, with what to do instead.
    """
    missing_paths, hub = [], {}
    for setting, value in sources.items():
        if value is None:
            continue
        source, filename = value if isinstance(value, tuple) else (value, None)
        source = os.fspath(source)
        if os.path.exists(source):
            continue
        if is_hub_id(source):
            hub[setting] = (source, filename)
        else:
            missing_paths.append(f"{setting}={source}")
    if missing_paths:
        raise ModelSourceError(f"not found: {', '.join(missing_paths)} (no such file or folder)")
    if not hub:
        return
    reason = hub_unreachable_reason()
    if reason is None:
        return
    go_offline(reason)
    uncached = [f"{setting}={source}" + (f" ({filename})" if filename else "")
                for setting, (source, filename) in hub.items() if not is_hub_cached(source, filename)]
    if uncached:
        raise ModelSourceError(
            f"no such local folder, and not in the Hugging Face cache while the Hub is unavailable ({reason}): "
            f"{', '.join(uncached)}; "
            "pass a local folder instead (e.g. " + uncached[0].split("=")[0] + "=DIR), or run once online to cache "
            "it (HF_HUB_OFFLINE=1 makes a missing model fail at once instead of after the Hub retries)")


@contextmanager
def loading(setting: str, source: str | os.PathLike | None) -> Iterator[None]:
    """Turn a loader's ``OSError`` (missing files, unknown repository) into a one-line [`ModelSourceError`] that
    names the setting."""
    try:
        yield
    except ModelSourceError:
        raise
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"cannot load {setting}={os.fspath(source) if source else source}: {first}") from exc
