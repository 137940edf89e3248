"""The data commands' worker processes (tgfr data synth and degrade, the embedded dataset's generation)."""

import collections
import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from tgfr.interruptions import INTERRUPTIONS, interruptions_deferred

# In a worker: set by the parent when it leaves the pool on an error or an interruption.
_stop: Any = None
# Chunks handed to the executor, per worker, ahead of the oldest whose result is awaited: enough to keep the
# workers busy (its queue feeds them workers + 1), few enough that a worker's error is raised at once.
# ProcessPoolExecutor.map submits every chunk before awaiting any: of 200,000 one-item chunks, the first's error,
# at 0.5 s, was raised after 8.7 s.
CHUNKS_AHEAD_PER_WORKER = 8


def _start_worker(stop: Any) -> None:
    """Each worker's initializer.

    A worker's Ctrl-C and SIGTERM (a scheduler's, sent to the whole process group) are its parent's to
    handle: a worker they ended would break the pool, with a traceback from the executor's thread. Deaf
    to SIGTERM, a worker must not outlive its parent either: a parent killed outright (SIGKILL, the
    out-of-memory killer) never tells it to stop, and it would wait for work for ever. A thread ends it
    when the parent's end of the pipe multiprocessing keeps for that purpose closes.
    """
    global _stop
    _stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), name="tgfr-parent-watch",
                         daemon=True).start()


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _unless_stopped(function: Callable, chunk: Sequence) -> list:
    """function(item) for each item of `chunk`, None for those after the parent stopped the pool: the work
    the executor already handed to the workers' queue (up to workers + 1 chunks), which cancelling its futures
    does not reach."""
    return [None if _stop.is_set() else function(item) for item in chunk]


@contextlib.contextmanager
def _interruptions_blocked_in_new_workers() -> Iterator[None]:
    """Blocks Ctrl-C and SIGTERM in this thread for the block, in which the executor may spawn a worker: a
    spawned process starts with its parent thread's signal mask, so a Ctrl-C to the process group while a worker
    imports, before _start_worker ignores it, no longer ends that worker with a KeyboardInterrupt traceback (it
    did in the pool's first ~0.2 s). The parent still receives the signal (in another of its threads, or here
    once the block ends): interruptions_deferred decides when it is raised."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTIONS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class WorkerPool:
    """`workers` spawned processes, as a context manager whose `map` returns a list.

    Ctrl-C and SIGTERM are left to the parent (_start_worker). Leaving the block on an error or an
    interruption stops the work not yet started and waits for the chunks under way (callers keep chunks
    to about a second of work), whose files the caller may remove next; a second Ctrl-C or SIGTERM meanwhile
    is taken once they end. A worker that dies (killed, say for memory; or failing as it starts, as in a
    script without an `if __name__ == "__main__":` guard, which each spawned worker imports again) is a
    ChildProcessError, where multiprocessing.Pool waited for ever. Workers end with their parent.
    """

    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._chunks_ahead = CHUNKS_AHEAD_PER_WORKER * workers
        self._executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                             initargs=(self._stop,))

    def map(self, function: Callable, items: Sequence, chunksize: int = 1) -> list:
        """[function(item) for item in items], in order, worked out in chunks of `chunksize` items. An error
        (the first in the items' order) is raised once the chunks before its own end."""
        work = functools.partial(_unless_stopped, function)
        submitted: collections.deque = collections.deque()
        results: list = []
        try:
            for start in range(0, len(items), chunksize):
                # Raised inside submit, between a worker's start and the executor's record of it, an
                # interruption would leave a worker the shutdown does not know of.
                with interruptions_deferred(), _interruptions_blocked_in_new_workers():
                    submitted.append(self._executor.submit(work, items[start:start + chunksize]))
                if len(submitted) >= self._chunks_ahead:
                    results += submitted.popleft().result()
            while submitted:
                results += submitted.popleft().result()
            return results
        except BrokenProcessPool as broken:
            if broken.__cause__ is not None:  # the worker ran, but its result or error did not unpickle here
                reason = [line.strip() for line in str(broken.__cause__).splitlines() if line.strip(" '")][-1]
                raise ChildProcessError(f"a worker's result or error could not be passed back to this process: "
                                        f"{reason}") from None
            raise ChildProcessError("a worker process ended abruptly (killed, say for lack of memory: try fewer "
                                    "workers; from a script, guard its top level with "
                                    "if __name__ == \"__main__\":, which every spawned worker imports again)") from None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> None:
        if error is not None:
            self._stop.set()
        # Waits for the chunks under way. Not terminate(): Python 3.11's executor then fails in its own thread
        # (InvalidStateError on the futures map already cancelled). Interrupted, the shutdown left its workers
        # waiting for work and the interpreter's exit waiting for them, for ever: a Ctrl-C meanwhile waits for it.
        with interruptions_deferred():
            self._executor.shutdown(cancel_futures=error is not None)


def check_workers(workers: int) -> None:
    """Refuses a worker count that is not a positive integer (0 would divide the work by zero)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
