"""Input files of the commands: why a path that should be a file is not one, for its error.

Path.is_file() is False alike for a missing path, a folder, a symbolic link whose target is gone
(a dataset's lists linked from a disk that is not mounted) and a pipe or socket. Told "does not
exist", a user looks for a file that is there; a broken link named as one says what to mount.
"""

import os
from pathlib import Path


def file_problem(path: Path) -> str | None:
    """None if `path` is a regular file (links followed); else what it is instead, worded to follow
    the path in an error: "does not exist", "is a folder, not a file", "is a broken symbolic link
    (to <target>)" or "is not a regular file (a pipe, socket or device)"."""
    if path.is_file():
        return None
    if path.is_dir():
        return "is a folder, not a file"
    if path.is_symlink():  # a link that does not resolve (its target is missing, or links loop)
        return f"is a broken symbolic link (to {os.readlink(path)})"
    if path.exists():
        return "is not a regular file (a pipe, socket or device)"
    return "does not exist"
