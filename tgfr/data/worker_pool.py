"""The data commands' worker processes (tgfr data synth and degrade, the embedded dataset's generation)."""

import multiprocessing
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool


def _leave_signals_to_parent() -> None:
    """A worker's Ctrl-C and SIGTERM (a scheduler's, sent to the whole process group) are its parent's to
    handle: a worker they ended would break the pool, with a traceback from the executor's thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class WorkerPool:
    """`workers` spawned processes, as a context manager whose `map` returns a list.

    Ctrl-C and SIGTERM are left to the parent (_leave_signals_to_parent); leaving the block on an error
    drops the work not yet started, and each worker ends once its current chunk is done (callers keep
    chunks to a second or two of work). A worker that dies (killed, say for memory; or failing as it
    starts, as in a script without an `if __name__ == "__main__":` guard, which each spawned worker
    imports again) is a ChildProcessError, where multiprocessing.Pool waited for ever.
    """

    def __init__(self, workers: int):
        self._executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_leave_signals_to_parent)

    def map(self, function: Callable, items: Sequence, chunksize: int = 1) -> list:
        try:
            return list(self._executor.map(function, items, chunksize=chunksize))
        except BrokenProcessPool:
            raise ChildProcessError("a worker process ended abruptly (killed, say for lack of memory: try fewer "
                                    "workers; from a script, guard its top level with "
                                    "if __name__ == \"__main__\":, which every spawned worker imports again)") from None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> None:
        # Waits for the chunks under way, whose files the caller may remove next. Not terminate(): Python
        # 3.11's executor then fails in its own thread (InvalidStateError on futures map already cancelled).
        self._executor.shutdown(cancel_futures=error is not None)


def check_workers(workers: int) -> None:
    """Refuses a worker count that is not a positive integer (0 would divide the work by zero)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
