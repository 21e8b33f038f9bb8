"""Temporary files of a run, named after the process that owns them, so that a later run can tell (and remove) the
ones a killed process left behind (SIGKILL, a crash, a power cut: no cleanup code runs then).

- Work folders (the frame cache of a looping video, an audio copy; the app's results):
  ``<temp dir>/latentsync-<kind>-<host>-<pid>-<random>/``, made by [`make_work_dir`]. Making one first removes the
  folders of processes of this machine that no longer run.
- Partial outputs: ``.<name>.<host>-<pid>.partial<ext>`` beside the output ([`partial_path`]), renamed to the output
  when complete. [`remove_stale_partials`] removes those of dead processes for one output (the next run on the same
  output calls it).

- Output folders: a run that creates the missing folders of its output ([`make_missing_folders`]) removes them
  again when it fails ([`remove_empty_folders`]), so that a failed run leaves nothing behind.

A process is dead when no process has its id, or when the id is this process's own but the file is not one it made
(a restarted container reuses low process ids). The host name keeps machines that share a folder apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from .errors import LatentSyncInputError

try:
    import fcntl  # POSIX: folder locks
except ImportError:  # Windows has no flock: folders are not locked there
    fcntl = None

logger = logging.getLogger(__name__)

PREFIX = "latentsync-"
T = TypeVar("T")

_owned: set[str] = set()  # work folders and partial files this process made and has not removed yet
_lock = threading.Lock()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _tag() -> str:
    return f"{_host()}-{os.getpid()}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_stale(host: str, pid: int, path: str) -> bool:
    if host != _host():
        return False
    if pid == os.getpid():
        with _lock:
            return path not in _owned
    return not _process_exists(pid)


def _own(path: str) -> None:
    with _lock:
        _owned.add(path)


def _disown(path: str) -> None:
    with _lock:
        _owned.discard(path)


# ---------------------------------------------------------------------------------------------------- work folders
_WORK_DIR = re.compile(rf"{re.escape(PREFIX)}[a-z]+-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[A-Za-z0-9_]+")


def make_work_dir(kind: str = "run", root: str | os.PathLike | None = None) -> str:
    """A new work folder for this process (in ``root``, default the system's temp folder), after removing the stale
    ones of dead processes."""
    remove_stale_work_dirs(root)
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{_tag()}-", dir=root)
    _own(path)
    return path


def remove_work_dir(path: str | os.PathLike) -> None:
    """Remove a work folder made by [`make_work_dir`] and everything in it."""
    path = os.fspath(path)
    shutil.rmtree(path, ignore_errors=True)
    _disown(path)


def remove_stale_work_dirs(root: str | os.PathLike | None = None) -> list[str]:
    """Remove the work folders that killed processes of this machine left in ``root`` (default: the temp folder);
    returns their paths."""
    root = os.fspath(root) if root is not None else tempfile.gettempdir()
    stale = _stale_entries(root, _WORK_DIR, folders=True)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _stale_entries(folder: str, pattern: re.Pattern, folders: bool) -> list[str]:
    """Paths in ``folder`` whose names match ``pattern`` (with groups ``host`` and ``pid``) and whose process is
    gone; only folders, or only files."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    found = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        kind_ok = entry.is_dir(follow_symlinks=False) if folders else entry.is_file(follow_symlinks=False)
        if match and kind_ok and _is_stale(match["host"], int(match["pid"]), entry.path):
            found.append(entry.path)
    return found


# ---------------------------------------------------------------------------------------------------- partial outputs
PARTIAL_NAME_BYTES = 255 - len(".") - len(".") - 40 - len(".partial")
"""The longest output name (UTF-8 bytes, its ending included) that its partial files keep whole: file systems take
names of 255 bytes, and a partial name adds a dot, ``.<host>-<pid>`` (at most 40 bytes) and ``.partial<ext>``."""


def _partial_stem(name: str) -> str:
    """``name`` as its partial files' names hold it: itself, or when it is longer than [`PARTIAL_NAME_BYTES`]
    with its ending (a title in Chinese or Japanese of some 70 characters), its start and a hash of the whole."""
    ext = os.path.splitext(name)[1]
    room = PARTIAL_NAME_BYTES - len(ext.encode())
    if len(name.encode()) <= room:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return name.encode()[: room - len(digest) - 1].decode(errors="ignore") + "~" + digest


def partial_path(output: str | os.PathLike) -> str:
    """The hidden file beside ``output`` that this process writes before renaming it to ``output``; it counts as this
    process's own until [`release_partial`]."""
    output = os.fspath(output)
    folder, name = os.path.split(os.path.abspath(output))
    ext = os.path.splitext(name)[1]
    path = os.path.join(folder, f".{_partial_stem(name)}.{_tag()}.partial{ext}")
    _own(path)
    return path


_UMASK_LOCK = threading.Lock()


def _new_file_mode() -> int:
    """The mode of a new file under the process's umask (0644 under the usual 022). Reading the umask means setting
    it: briefly, under a lock, restored at once."""
    with _UMASK_LOCK:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> str:
    """Call ``write(partial)`` to write a file at the hidden partial path beside ``path``, then rename it to ``path``:
    readers (and a later run after a kill) never see half a file, and a failed write leaves no file. Missing folders
    of ``path`` are created. Returns ``path``."""
    path = os.fspath(path)
    write_files_atomically({"file": path}, lambda partials: write(partials["file"]))
    return path


def write_files_atomically(paths: Mapping[str, str | os.PathLike], write: Callable[[dict[str, str]], object]) -> None:
    """Call ``write(partials)`` to write several files (``paths``: name -> path) at their hidden partial paths, then
    rename them all in place once every one is complete: a failed write leaves the earlier files (or none), never a
    mix of old and new. Missing folders are created."""
    partials: dict[str, str] = {}
    try:
        for key, path in paths.items():
            make_missing_folders(os.path.dirname(os.path.abspath(path)))
            remove_stale_partials(path)
            partials[key] = partial_path(path)
        write(partials)
        mode = _new_file_mode()
        for key, path in paths.items():
            if os.path.isfile(partials[key]):
                # as any file the user creates: some writers (safetensors' save_file) make theirs owner-only (0600),
                # which another user, or a server running as one, then cannot read
                os.chmod(partials[key], mode)
            os.replace(partials[key], os.fspath(path))
    finally:
        for partial in partials.values():
            if os.path.exists(partial):
                os.remove(partial)
            release_partial(partial)


def partial_target(name: str) -> str | None:
    """The output file name whose partial file (see [`partial_path`]) is named ``name``, or None when ``name`` is
    not a partial file's."""
    match = re.fullmatch(r"\.(?P<output>.+)\.[A-Za-z0-9]+-\d+\.partial(?P<ext>\.[^.]*)?", name)
    if match is None or os.path.splitext(match["output"])[1] != (match["ext"] or ""):
        return None
    return match["output"]


def release_partial(path: str) -> None:
    """Forget a partial file (after it was renamed to the output or removed)."""
    _disown(path)


def remove_stale_partials(output: str | os.PathLike) -> list[str]:
    """Remove the partial files of ``output`` that killed processes of this machine left beside it; returns their
    paths."""
    folder, name = os.path.split(os.path.abspath(os.fspath(output)))
    ext = re.escape(os.path.splitext(name)[1])
    pattern = re.compile(rf"\.{re.escape(_partial_stem(name))}\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)\.partial{ext}")
    removed = []
    for path in _stale_entries(folder, pattern, folders=False):
        try:
            os.remove(path)
            removed.append(path)
        except OSError:  # removed meanwhile, or not ours to remove
            pass
    for path in _stale_entries(folder, pattern, folders=True):  # partial output folders
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def check_output_folder(output: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (), overwrite: bool = False,
                        what: str = "output", error: type[LatentSyncInputError] = LatentSyncInputError) -> str:
    """``output`` as a string once a folder may be written there by [`write_folder_atomically`]: a new or empty
    folder, or (``overwrite``) an existing one, which is replaced as a whole. It may not be one of the ``inputs``
    (files or folders the command reads), lie inside one, or hold one (replacing it would delete the input).

    Raises:
        error: one line naming the problem; ``what`` names the output in it.
    """
    output = os.fspath(output)
    out = os.path.realpath(output)
    for source in inputs:
        src = os.path.realpath(source)
        if out == src or out.startswith(src.rstrip(os.sep) + os.sep):
            raise error(f"the {what} {output} is inside the input {os.fspath(source)}: choose a folder "
                                    "outside it (the input is only read)")
        if src.startswith(out.rstrip(os.sep) + os.sep) and os.path.lexists(output):
            raise error(f"the {what} {output} holds the input {os.fspath(source)}: writing it would "
                                    "replace that folder and delete the input; choose another folder")
    if os.path.lexists(output) and (not os.path.isdir(output) or os.listdir(output)) and not overwrite:
        raise error(f"{output} already exists: choose another {what} folder or pass --overwrite")
    return output


def write_folder_atomically(output: str | os.PathLike, write: Callable[[str], T]) -> T:
    """Call ``write(folder)`` to fill a hidden partial folder beside ``output``, then put it in ``output``'s place
    (an existing ``output`` is removed first: check it with [`check_output_folder`]). A failed or killed write
    leaves no ``output``. Returns what ``write`` returned."""
    output = os.fspath(output)
    make_missing_folders(os.path.dirname(os.path.abspath(output)))
    remove_stale_partials(output)
    partial = partial_path(output)
    try:
        result = write(partial)
        if os.path.isdir(output) and not os.path.islink(output):
            shutil.rmtree(output)
        elif os.path.lexists(output):
            os.remove(output)
        os.replace(partial, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        release_partial(partial)
    return result


def nearest_folder(folder: str | os.PathLike) -> tuple[str, str | None]:
    """The nearest existing folder at or above ``folder`` (absolute), and the file that stands in the way of creating
    the missing rest (the lowest one on the path), or None when the missing folders can be made."""
    existing, blocker = os.path.abspath(folder), None
    while not os.path.isdir(existing):
        if blocker is None and os.path.lexists(existing):
            blocker = existing
        existing = os.path.dirname(existing)
    return existing, blocker


def writable_problem(folder: str | os.PathLike) -> str | None:
    """Why no file can be created in the existing ``folder`` (e.g. ``Read-only file system``), or None when one can
    (checked by creating and removing a file there)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".latentsync-write-test-", dir=os.fspath(folder))
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.remove(probe)
    return None


def lock_folder(folder: str | os.PathLike) -> int | None:
    """Lock the existing ``folder`` for this process (``flock``, exclusive, without waiting): returns the descriptor
    that holds the lock until it is closed, or until the process ends however it ends (a killed run leaves no stale
    lock). None where there are no such locks (Windows, some network file systems): the caller goes on unlocked.

    Raises:
        BlockingIOError: another process (or another open descriptor) holds the folder.
    """
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # a file system without locks
        os.close(fd)
        logger.debug("cannot lock %s: going on without a lock", folder)
        return None
    return fd


def folder_is_locked(folder: str | os.PathLike) -> bool:
    """Whether another process holds the existing ``folder`` with [`lock_folder`] (the check takes and drops it)."""
    try:
        fd = lock_folder(folder)
    except BlockingIOError:
        return True
    if fd is not None:
        os.close(fd)
    return False


@contextlib.contextmanager
def folder_held(created: list[str], fd: int | None) -> Iterator[None]:
    """The block that uses a folder this process made (``created``, from [`make_missing_folders`]) and locked
    (``fd``, from [`lock_folder`]): when it fails, the folders it made are removed again while empty; at its end the
    lock is released."""
    try:
        yield
    except BaseException:
        remove_empty_folders(created)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def make_missing_folders(folder: str | os.PathLike) -> list[str]:
    """Create ``folder`` and its missing parents; returns the folders created, innermost first."""
    missing, folder = [], os.path.abspath(folder)
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    if missing:
        os.makedirs(missing[0], exist_ok=True)
    return missing


def remove_empty_folders(folders: list[str]) -> None:
    """Remove ``folders`` (as [`make_missing_folders`] returned them, innermost first) while they are empty: a run
    that failed takes back the folders it made, but never one that something else has put a file into."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (another run wrote there) or already gone
            break
