"""Input files of the commands: why a path that should be a file is not one, for its error.

Path.is_file() is False alike for a missing path, a folder, a symbolic link whose target is gone
(a dataset's lists linked from a disk that is not mounted) and a pipe or socket. Told "does not
exist", a user looks for a file that is there; a broken link named as one says what to mount. And a
pipe must be named before it is opened: opening one waits for a writer, for ever.
"""

import errno
import os
import stat
from pathlib import Path


def refuse_empty_path(what: str, path: object, remedy: str) -> None:
    """ValueError "<what> is empty: <remedy>" for a path given as "": as a Path, "" is ".", so an unset shell
    variable (`--out "$RUN"`) would have the current folder read or written."""
    if isinstance(path, str) and not path:
        raise ValueError(f"{what} is empty: {remedy}")


def is_broken_link(path: Path) -> bool:
    """Whether `path` is a symbolic link that does not resolve (its target is missing, or links loop)."""
    return os.path.islink(path) and not os.path.exists(path)


def file_problem(path: Path) -> str | None:
    """None if `path` is a regular file (links followed); else what it is instead, worded to follow
    the path in an error: "does not exist", "is a folder, not a file", "is a broken symbolic link
    (to <target>)", "is not a regular file (a pipe, socket or device)" or "cannot be reached (<why>)"
    (a folder on its way that this process may not search)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ELOOP) and os.path.islink(path):  # its target is missing, or links loop
            return f"is a broken symbolic link (to {os.readlink(path)})"
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return "does not exist"
        return f"cannot be reached ({error.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return "is not a regular file (a pipe, socket or device)"
