"""Small concurrency helpers that let CPU stages (decode, alignment, paste-back, encode) overlap the denoising.

Every queue is bounded, so memory stays constant whatever the video length.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class StageTimer:
    """Accumulates busy seconds per named stage (thread-safe)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[stage] += elapsed

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds)


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(iterator: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run ``iterator`` in a background thread, at most ``depth`` items ahead of the consumer."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer thread
            put(_Failure(exc))

    thread = threading.Thread(target=run, name="latentsync-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class OrderedWorker:
    """Runs submitted calls one after another in a background thread, keeping at most ``depth`` pending.

    ``submit`` blocks when the backlog is full and re-raises the first failure; ``close`` waits for the rest.
    """

    def __init__(self, fn: Callable[..., None], depth: int = 2):
        self._fn = fn
        self._depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentsync-writer")
        self._pending: deque[Future] = deque()

    def submit(self, *args: Any) -> None:
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._fn, *args))

    def close_quietly(self) -> None:
        """Drop the backlog without raising (used while another error propagates)."""
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
