"""One writer at a time per output folder: a run folder (tgfr train), a synthetic dataset's folder, a
manifest's folder (tgfr data degrade), a report folder (tgfr evaluate).

Two processes writing one folder (a resume started twice, a scheduler's requeue while the first job
still runs, two commands given the same --out) would interleave their files: a checkpoint written by
both and every step logged twice, images of one dataset under another's manifest, one degraded
copy's images under another's recipe, or one evaluation's metrics.json beside another's report.md.
The writer holds an exclusive flock on the folder itself (no lock file to leave behind): the system
releases it when the process ends, however it ends, so no stale lock outlives a kill (its forked children,
which would share it, let go of it as they start).
"""

import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# The descriptors of the locks this process holds.
_held: set[int] = set()


def _let_go_in_child() -> None:
    """A forked child (a DataLoader worker) shares its parent's lock through the inherited descriptor, and
    would keep the folder locked after the parent ended (killed, say) until it noticed, seconds later. Its
    copies are closed; the parent's keep the lock."""
    for descriptor in _held:
        os.close(descriptor)
    _held.clear()


os.register_at_fork(after_in_child=_let_go_in_child)


@contextlib.contextmanager
def folder_lock(folder: Path, in_use: str | None = None, waiting: str | None = None) -> Iterator[None]:
    """Holds `folder`'s lock (the folder must exist) for the block. A folder that another process holds
    is a ValueError with message `in_use`, or with in_use None waited for, saying `waiting` (when
    given) on stderr first; the block then goes after the other's, whole. Where the file system has
    no locks (some network file systems) the block runs unguarded."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    _held.add(descriptor)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            busy = error.errno in (errno.EWOULDBLOCK, errno.EAGAIN)  # else the file system has no locks
            if busy and in_use is not None:
                raise ValueError(in_use) from None
            if busy:
                if waiting:
                    print(waiting, file=sys.stderr, flush=True)
                fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        _held.discard(descriptor)
        os.close(descriptor)
