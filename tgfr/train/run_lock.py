"""One `tgfr train` at a time per run folder.

Two processes training one folder (a resume started twice, a scheduler's requeue while the first
job still runs, two new runs given the same --out) would both write its checkpoint and log every
step twice. Rank 0 holds an exclusive flock on the folder itself (no lock file to leave behind): the
system releases it when the process ends, however it ends, so no stale lock outlives a kill.
"""

import errno
import fcntl
import os
from pathlib import Path


def lock_run_folder(out: Path) -> int | None:
    """Takes `out`'s lock and returns the descriptor that holds it (close it to release); None where
    the file system has no locks (some network file systems), where the run goes on unguarded. A
    folder another process holds is a ValueError."""
    descriptor = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ValueError(f"run folder {out} is being trained by another tgfr train process: wait for it to "
                             "end (two processes would write the same checkpoint and log every step twice)") from None
        return None
    return descriptor
