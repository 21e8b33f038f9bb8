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
import os
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
    the exception, as gradio's server loop does). ``on_stop(signum)``, a quick call that tells work in other threads
    to stop, runs as soon as a signal arrives, from a watcher thread: Python runs signal handlers only in the main
    thread, and only once it runs again, which a main thread blocked in a socket read (waiting for the very work to
    stop) does not do while the signal went to another thread. Outside the main thread (where Python cannot install
    signal handlers) the block runs unchanged."""
    state = StopState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame) -> None:
        if state.signum is not None:
            logger.debug("signal %d while stopping: ignored, the cleanup is under way", signum)
            return
        state.signum = signum
        raise RunInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    watcher = _SignalWatcher(signals, on_stop) if on_stop is not None else None
    try:
        yield state
    finally:
        if watcher is not None:
            watcher.close()
        _restore_handlers(previous)


@contextmanager
def signals_held(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, ``signals`` wait: the calling thread and the processes it starts have them blocked (as
    [`signal.pthread_sigmask`]), and one that another thread receives is recorded instead of acted on (in the main
    thread, where Python runs its handlers). At the block's end the first one recorded is sent again, to the handlers
    of before: a Ctrl-C during the block interrupts after it, never half-way (e.g. between starting a worker
    process and registering it)."""
    got: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in signals} if main else {}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal that came to this thread meanwhile: recorded
        _restore_handlers(previous)
        if got:
            os.kill(os.getpid(), got[0])


def _restore_handlers(previous: dict[int, object]) -> None:
    """Puts back the handlers ``signal.signal`` returned; None stands for a handler installed outside Python, which
    cannot be put back."""
    for signum, old in previous.items():
        if old is not None:
            signal.signal(signum, old)


class _SignalWatcher:
    """Calls ``on_stop(signum)`` from its own thread when one of ``signals`` arrives (Python's wakeup file
    descriptor, written by the C-level handler on whichever thread the signal reached)."""

    def __init__(self, signals: tuple[int, ...], on_stop: Callable[[int], None]):
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._signals, self._on_stop = set(signals), on_stop
        self._thread = threading.Thread(target=self._watch, name="latentsync-signal-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while data := os.read(self._read, 64):
            found = [s for s in data if s in self._signals]
            if found:
                self._on_stop(found[0])
                return

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self._write)  # the watcher's read ends
        self._thread.join(timeout=1)
        os.close(self._read)


def interrupt_of(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (a ``KeyboardInterrupt``) behind ``exc``: ``exc`` itself, or one that was being handled
    when ``exc`` was raised (a library whose cleanup fails when the signal arrives mid-call); None when there is
    none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def signal_number(interrupt: KeyboardInterrupt) -> int:
    """The signal behind ``interrupt``: its ``signum`` ([`RunInterrupted`]), else SIGINT (a plain Ctrl-C)."""
    return int(getattr(interrupt, "signum", signal.SIGINT))
