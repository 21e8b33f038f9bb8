"""Errors raised for bad user input, and the exception of a run stopped by a signal. Each message is one line that
names the file or argument and the problem.

The command line turns a [`LatentSyncInputError`] into its message and exit status 2, and a [`RunInterrupted`] into
exit status 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import errno
import signal


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG)
"""The ``OSError`` numbers of a disk or folder that cannot take a run's files (full, over quota, read-only, not
permitted, failing, or a file over the file system's size limit)."""


class LatentSyncInputError(ValueError):
    """An input file or argument cannot be used."""


class InvalidVideoError(LatentSyncInputError):
    """The video file is missing, unreadable, empty or has no frames."""


class InvalidAudioError(LatentSyncInputError):
    """The audio file is missing, unreadable, has no audio stream, or is empty or silent."""


class InvalidOutputError(InvalidVideoError):
    """The output path cannot be written: unsupported format, a folder, an input file, an existing file (when
    overwriting is off), or a folder that is missing or not writable.

    A subclass of [`InvalidVideoError`], which earlier releases raised for output paths."""


class NoFaceError(LatentSyncInputError):
    """No face was found in any frame of the video (or not the face that ``face_index`` asks for)."""


class ModelNotFoundError(LatentSyncInputError):
    """The model is neither a pipeline folder nor a Hub id that can be loaded (unknown, or not cached offline)."""


class DeviceError(LatentSyncInputError):
    """The device is not available on this machine, or cannot compute in the requested dtype."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM. A subclass of ``KeyboardInterrupt``, so code that cleans up after
    Ctrl-C cleans up after SIGTERM too.

    Attributes:
        signum: the signal that stopped the run.
    """

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def signal_name(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + self.signum


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty): what a one-line error
    quotes of a library's longer error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
