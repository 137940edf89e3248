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
    """Iterates `source` in a daemon thread, at most `depth` items ahead of the consumer: an item is
    made only when there is room for it, so that besides the item in use at most `depth` exist.

    An exception raised by `source` is raised again by the `next` call that reaches it. Use as a
    context manager (or call `close`): leaving it stops the thread, which then closes `source`
    (a generator's `finally` blocks run, a DataLoader's workers stop).
    """

    def __init__(self, source: Iterator[Item], depth: int = 1):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._room = threading.Semaphore(depth)  # taken before an item is made, given back when it is consumed
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._fill, args=(source,), name="tgfr-prefetch", daemon=True)
        self._thread.start()

    def _fill(self, source: Iterator[Item]) -> None:
        try:
            while True:
                self._room.acquire()
                if self._stop.is_set():
                    return
                try:
                    item = next(source)
                except StopIteration as end:
                    self._queue.put((False, end))
                    return
                self._queue.put((True, item))
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
            self._room.release()
            return value
        self._finished = True
        raise value

    def close(self) -> None:
        """Stops the thread (after the item it may be making) and closes the source."""
        self._stop.set()
        self._room.release()  # wakes a thread that waits for room
        self._thread.join()
        self._finished = True

    def __enter__(self) -> "Prefetcher[Item]":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
