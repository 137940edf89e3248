"""The next training batch, made in a background thread while the current step computes.

Decoding, degrading and transforming a batch take about half of a CPU training step, on the main
thread, while the step's torch ops leave the cores idle between their parallel regions. A thread
makes the next batch meanwhile (PIL, numpy and torch release the GIL for their work). Prefetching
changes no result: every sample draws from its own seeded generator, and the data path touches
none of the global RNGs that checkpoints save.
"""

import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Prefetcher(Generic[Item]):
    """Iterates `source` in a daemon thread, up to `depth` items ahead of the consumer.

    An exception raised by `source` is raised again by the `next` call that reaches it. Use as a
    context manager (or call `close`): leaving it stops the thread, which then closes `source`
    (a generator's `finally` blocks run, a DataLoader's workers stop).
    """

    def __init__(self, source: Iterator[Item], depth: int = 1):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._fill, args=(source,), name="tgfr-prefetch", daemon=True)
        self._thread.start()

    def _fill(self, source: Iterator[Item]) -> None:
        try:
            for item in source:
                self._queue.put((True, item))
                if self._stop.is_set():
                    return
            self._queue.put((False, StopIteration()))
        except BaseException as error:  # handed to the consumer, whatever it is
            self._queue.put((False, error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> "Prefetcher[Item]":
        return self

    def __next__(self) -> Item:
        if self._finished:
            raise StopIteration
        is_item, value = self._queue.get()
        if is_item:
            return value
        self._finished = True
        raise value

    def close(self) -> None:
        """Stops the thread: takes what it has made (so that a waiting put returns) until it ends."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._finished = True

    def __enter__(self) -> "Prefetcher[Item]":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
