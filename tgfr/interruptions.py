"""Holding Ctrl-C and SIGTERM back while code runs that an exception must not cut short: a worker pool's
shutdown or submission, and the imports of the `tgfr` command (torch's C++ set-up aborts the process on an
exception raised inside it)."""

import contextlib
import signal
import threading
from collections.abc import Iterator

INTERRUPTIONS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interruptions_deferred() -> Iterator[None]:
    """Holds back Ctrl-C and SIGTERM for the block, then raises the last one received through its handler (in
    place of an error the block raises).
    Signal handlers live on the main thread: elsewhere the block runs as it is, and so does a signal whose
    handler was not set from Python (signal.getsignal gives None: it could not be put back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = [signum for signum in INTERRUPTIONS if signal.getsignal(signum) is not None]
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:  # an error of the block too gives way to it: the user asked to stop
            signal.raise_signal(received[-1])
