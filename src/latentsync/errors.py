"""Errors raised for bad user input. Each message names the file and the problem."""


class LatentSyncInputError(ValueError):
    """An input file or argument cannot be used."""


class InvalidVideoError(LatentSyncInputError):
    """The video file is missing, unreadable, empty or has no frames."""


class InvalidAudioError(LatentSyncInputError):
    """The audio file is missing, unreadable, has no audio stream, or is empty or silent."""


class NoFaceError(LatentSyncInputError):
    """No face was found in any frame of the video."""
