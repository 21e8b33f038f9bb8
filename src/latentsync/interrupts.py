"""Stopping cleanly on Ctrl-C (SIGINT) and SIGTERM, the signal that containers, job schedulers and Space restarts
send before killing a process.

Python turns Ctrl-C into ``KeyboardInterrupt`` but dies on SIGTERM without running any cleanup. Within
[`stop_on_signals`] both raise [`~latentsync.errors.RunInterrupted`] (a ``KeyboardInterrupt``) in the main thread, so
the ``finally`` blocks and context managers of the run (the pipeline's video stream: background threads, ffmpeg
processes, the partial output, the frame cache) clean up as they do after any error. A second signal while the run is
cleaning up is ignored: cleanup takes a few seconds at most.

The command line and the app use it; a program of your own that calls the pipeline can too::

    with stop_on_signals():
        pipe(video="in.mp4", audio="speech.wav", output_path="out.mp4")
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import RunInterrupted

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopState:
    """What [`stop_on_signals`] saw: the signal that stopped the block, or None."""

    signum: int | None = None


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS,
                    on_stop: Callable[[int], None] | None = None) -> Iterator[StopState]:
    """Within the block, the first of ``signals`` raises [`RunInterrupted`] in the main thread and later ones are
    ignored; the previous handlers come back afterwards. Yields a [`StopState`] (useful when code inside swallows
    the exception, as gradio's server loop does). ``on_stop(signum)`` runs first, in the handler: a quick call that
    tells work in other threads to stop (the exception reaches only the main thread, which may be waiting for them).
    Outside the main thread (where Python cannot install signal handlers) the block runs unchanged."""
    state = StopState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame) -> None:
        if state.signum is not None:
            logger.debug("signal %d while stopping: ignored, the cleanup is under way", signum)
            return
        state.signum = signum
        if on_stop is not None:
            on_stop(signum)
        raise RunInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield state
    finally:
        for s, old in previous.items():
            if old is not None:  # None: a handler installed outside Python, which cannot be put back
                signal.signal(s, old)
