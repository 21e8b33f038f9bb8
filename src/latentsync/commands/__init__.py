"""The ``latentsync`` command line: one module per subcommand, each with its argument parser.

``latentsync --video in.mp4 --audio speech.wav --output out.mp4`` lip-syncs a video ([`latentsync.commands.run`]);
the subcommands are ``make-tiny``, ``convert``, ``prepare``, ``eval``, ``faces``, ``batch``,
``export-checkpoint`` and ``avatar``.

Exit status: 0 on success, 2 for bad input or arguments (one line on stderr, no traceback), 130 after Ctrl-C and 143
after SIGTERM (the partial output and the temporary files removed).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from ..errors import LatentSyncInputError, RunInterrupted
from ..interrupts import stop_on_signals

logger = logging.getLogger("latentsync")

# subcommand -> (module, function); the lip-sync run is the default command
COMMANDS: dict[str, tuple[str, str]] = {
    "make-tiny": ("latentsync.commands.make_tiny", "make_tiny"),
    "convert": ("latentsync.commands.convert", "convert"),
    "prepare": ("latentsync.commands.prepare", "prepare"),
    "eval": ("latentsync.commands.eval", "main"),
    "faces": ("latentsync.commands.faces", "faces"),
    "batch": ("latentsync.commands.batch", "batch"),
    "export-checkpoint": ("latentsync.commands.export_checkpoint", "export_checkpoint_command"),
    "avatar": ("latentsync.commands.avatar", "avatar"),
}
RUN = ("latentsync.commands.run", "run")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``latentsync``: dispatch to a subcommand; bad input exits with status 2 and one line, Ctrl-C
    and SIGTERM with 130 and 143 after cleaning up."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    target = COMMANDS.get(argv[0], RUN) if argv else RUN
    if target is not RUN:
        argv = argv[1:]
    try:
        with stop_on_signals():
            # deferred: each subcommand imports only its own (optional) dependencies: eval needs scipy and
            # torchmetrics, prepare needs datasets and scenedetect; the lip-sync run imports torch only once its
            # inputs are checked
            command = getattr(importlib.import_module(target[0]), target[1])
            return command(argv)
    except LatentSyncInputError as exc:
        logger.error("%s", exc)
        return 2
    except RunInterrupted as exc:
        logger.error("stopped by %s: nothing was written, temporary files were removed", exc.signal_name)
        return exc.exit_code
    except KeyboardInterrupt:  # outside the main thread no handler is installed; Ctrl-C still cleans up
        logger.error("stopped by Ctrl-C: nothing was written, temporary files were removed")
        return 130


def entry() -> None:
    """The ``latentsync`` console script: [`main`], then exit with its status. After Ctrl-C or SIGTERM, when the
    run has cleaned up, the process ends at once instead of spending seconds tearing down torch, diffusers and
    MediaPipe (a container gives a stopped process about ten seconds before it kills it)."""
    code = main()
    if code in (130, 143):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
