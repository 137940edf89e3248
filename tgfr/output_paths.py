"""Output paths of the commands, checked before any work: a file where a folder is due (or the
reverse), here or in a parent, would otherwise fail only when the output is written, after the
work, with an OSError that names no option."""

import os
from pathlib import Path


def _first_existing(path: Path) -> Path | None:
    return next((p for p in (path, *path.parents) if p.exists()), None)


def check_output_folder(setting: str, path: str | Path, writable: bool = False) -> Path:
    """`path` as a folder that exists or can be made: the first of it and its parents that exists
    is a folder (and, with `writable`, one this process may write into). `setting` names the
    option or key in the error."""
    path = Path(path)
    existing = _first_existing(path)
    if existing is not None and not existing.is_dir():
        where = "" if existing == path else f": {existing}"
        raise ValueError(f"{setting} {path}{where} is a file, not a folder")
    if writable and existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{setting} {path}: {existing} is not writable")
    return path


def check_output_file(setting: str, path: str | Path) -> Path:
    """`path` as a file that can be written: not a folder, and its folder exists or can be made."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{setting} {path} is a folder, not a file")
    existing = _first_existing(path.parent)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"{setting} {path}: {existing} is a file, not a folder")
    return path
