"""The ``latentsync`` command line: one module per subcommand, each with its argument parser.

``latentsync --video in.mp4 --audio speech.wav --output out.mp4`` lip-syncs a video ([`latentsync.commands.run`]);
the subcommands are ``make-tiny``, ``convert``, ``prepare``, ``eval``, ``faces`` and ``avatar``.
"""

from __future__ import annotations

import importlib
import logging
import sys

from ..errors import LatentSyncInputError

logger = logging.getLogger("latentsync")

# subcommand -> (module, function); the lip-sync run is the default command
COMMANDS: dict[str, tuple[str, str]] = {
    "make-tiny": ("latentsync.commands.make_tiny", "make_tiny"),
    "convert": ("latentsync.commands.convert", "convert"),
    "prepare": ("latentsync.commands.prepare", "prepare"),
    "eval": ("latentsync.commands.eval", "main"),
    "faces": ("latentsync.commands.faces", "faces"),
    "avatar": ("latentsync.commands.avatar", "avatar"),
}
RUN = ("latentsync.commands.run", "run")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``latentsync``: dispatch to a subcommand; bad input exits with status 2 and one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    target = COMMANDS.get(argv[0], RUN) if argv else RUN
    if target is not RUN:
        argv = argv[1:]
    # deferred: each subcommand imports only its own (optional) dependencies: eval needs scipy and torchmetrics,
    # prepare needs datasets and scenedetect, the lip-sync run needs neither
    command = getattr(importlib.import_module(target[0]), target[1])
    try:
        return command(argv)
    except LatentSyncInputError as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
