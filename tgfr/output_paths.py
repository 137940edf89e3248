"""Output paths of the commands: checked before any work, and written atomically.

A file where a folder is due (or the reverse), here or in a parent, would otherwise fail only when
the output is written, after the work, with an OSError that names no option. A file written in
place (open "w") is lost when the write fails halfway (a full disk, an unencodable name), and what
is left may still read as a valid, shorter file; `write_atomically` leaves the old file instead,
and `replace_entries_atomically` the old entries of a folder (a checkpoint's files, which only
load together) until every new one is written.
"""

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from tgfr.input_paths import is_broken_link, refuse_empty_path

_Made = TypeVar("_Made")

# replace_entries_atomically's staging folder is .STAGING.<8 hex digits>.tmp inside the folder it writes.
STAGING = "staging"


def _first_existing(path: Path) -> Path | None:
    """The first of `path` and its parents that is there, a broken symbolic link included (making a
    folder there fails with a bare "File exists", after the work)."""
    return next((p for p in (path, *path.parents) if os.path.lexists(p)), None)


def _not_a_folder(setting: str, path: Path, existing: Path) -> ValueError:
    where = "" if existing == path else f": {existing}"
    if is_broken_link(existing):
        return ValueError(f"{setting} {path}{where} is a broken symbolic link (to {os.readlink(existing)})")
    return ValueError(f"{setting} {path}{where} is a file, not a folder")


def check_output_folder(setting: str, path: str | Path, writable: bool = False) -> Path:
    """`path` as a folder that exists or can be made: the first of it and its parents that exists
    is a folder (and, with `writable`, one this process may write into). `setting` names the
    option or key in the error. A string `path` must not be empty."""
    refuse_empty_path(setting, path, "name the folder to write")
    path = Path(path)
    existing = _first_existing(path)
    if existing is not None and not existing.is_dir():
        raise _not_a_folder(setting, path, existing)
    if writable and existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{setting} {path}: {existing} is not writable")
    return path


def check_output_file(setting: str, path: str | Path) -> Path:
    """`path` as a file that can be written: not a folder, its folder exists or can be made, and, if it
    is a symbolic link, one that resolves into a folder that exists (write_atomically writes through it);
    the folder the file goes in (or the first of its parents that exists) is one this process may write
    into, and its name leaves room for write_atomically's temporary name. A string `path` must not be
    empty nor end in a separator (a folder's spelling)."""
    # As a Path, "out/" is "out", which would be written as a file where a folder was meant.
    refuse_empty_path(setting, path, "name the file to write")
    if isinstance(path, str) and path.endswith(("/", os.sep)):
        raise ValueError(f"{setting} {path} ends in {path[-1]!r}, as a folder does: name the file itself")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{setting} {path} is a folder, not a file")
    # A link into a disk that is not mounted (the target's missing folders are not made: the file would land
    # under the mount point) or a loop of links: the write would fail, after the work.
    target = Path(os.path.realpath(path))
    if is_broken_link(path) and (target.is_symlink() or not target.parent.is_dir()):
        why = "the links loop" if target.is_symlink() else f"the folder {target.parent} does not exist"
        raise ValueError(f"{setting} {path} is a broken symbolic link (to {os.readlink(path)}): {why}")
    existing = _first_existing(path.parent)
    if existing is not None and not existing.is_dir():
        raise _not_a_folder(setting, path, existing)
    # write_atomically writes beside the link's target, not beside the link. Both checks below would
    # otherwise fail only at the write, after the work (a dataset on a read-only mount, a long --out name).
    folder = target.parent if os.path.lexists(path) else existing
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{setting} {path}: {folder} is not writable")
    longest = _longest_name(folder) if folder is not None else None
    length = len(os.fsencode(target.name))
    if longest is not None and length + len(temporary_name("")) > longest:
        raise ValueError(f"{setting} {path}: its name is {length} bytes long and is first written as "
                         f".<name>.<8 hex digits>.tmp, {len(temporary_name(''))} bytes longer, past the {longest} "
                         f"bytes that the file system of {folder} takes in a name; choose a shorter name")
    return path


def _longest_name(folder: Path) -> int | None:
    """The longest file name, in bytes, that the file system of `folder` takes; None where it does not say."""
    try:
        longest = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):  # a system or file system that cannot say
        return None
    return longest if longest > 0 else None  # -1: no limit


def temporary_name(name: str, suffix: str = "tmp") -> str:
    """.<name>.<8 random hex digits>.<suffix>: the name under which a file `name` is first written
    (write_atomically), always len(temporary_name("")) bytes longer than `name` in UTF-8, so `name`
    itself must leave that much room under the file system's longest name."""
    # secrets, not random: a training's global RNG streams must not move with a checkpoint.
    return f".{name}.{secrets.token_hex(4)}.{suffix}"


def _make_beside(path: Path, make: Callable[[Path], _Made], suffix: str = "tmp") -> tuple[_Made, Path]:
    """`make` (which fails with FileExistsError where its path exists) called on a new name
    temporary_name(name of path, suffix) beside `path`; what it returns, and that name."""
    while True:
        candidate = path.with_name(temporary_name(path.name, suffix))
        try:
            return make(candidate), candidate
        except FileExistsError:
            continue


def _open_temporary(path: Path) -> tuple[int, Path]:
    """A new file .<name of path>.<8 random hex digits>.tmp beside `path`, opened for writing, with the
    permissions the umask gives any new file (tempfile.mkstemp's are 0600 whatever the umask)."""
    return _make_beside(path, lambda temporary: os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextlib.contextmanager
def write_atomically(path: str | Path, what: str, binary: bool = False) -> Iterator[IO]:
    """A stream (text, UTF-8, or with `binary` bytes) whose content replaces the file `path` when the
    block ends without an error: it is written to a temporary file beside `path`, flushed to disk and
    renamed over `path` (os.replace is atomic), so `path` holds either its old content or all of the new.
    On any error the temporary file is removed and `path` left as it was; an OSError is raised again
    naming `path` (`what` says what it is, e.g. "manifest"). A process killed while writing leaves the
    temporary file, which `remove_temporaries(path)` deletes. Missing parent folders of `path` are made.
    A new file gets the permissions the umask gives any new file, a replaced one keeps its own; a symlink
    `path` has its target replaced, as open("w") would write through it, and its target's folder is never
    made (as open("w") would not)."""
    path = Path(path)
    # The folders of `path` as given, not of its resolved target: a link into a disk that is not mounted
    # would have the disk's folders made under its mount point, and the file written there.
    path.parent.mkdir(parents=True, exist_ok=True)  # its error names the folder
    target = Path(os.path.realpath(path))
    try:
        handle, temporary = _open_temporary(target)
    except OSError as error:
        raise _naming(error, what, path) from error
    # newline="": "\n" stays "\n" on every platform, as the csv module needs.
    stream = os.fdopen(handle, "wb") if binary else os.fdopen(handle, "w", encoding="utf-8", newline="")
    try:
        with stream:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(stream.fileno(), stat.S_IMODE(os.stat(target).st_mode))
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _naming(error, what, path) from error
        raise


@contextlib.contextmanager
def replace_entries_atomically(folder: str | Path, what: str, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """An empty staging folder .staging.<8 random hex digits>.tmp inside `folder` (made, with
    its parents, if missing); when the block ends without an error, every file in it is flushed to disk
    and each of its entries replaces the entry of that name in `folder` by a rename (an existing folder
    entry is moved aside first, then removed, or put back if the rename fails), the names in `last` last;
    then the staging folder is removed. `folder` itself stays (a mount point, a process's working
    directory, its owner and mode, a user's other files in it). On any error in the block the staging
    folder is removed, `folder` left as it was, and an OSError raised naming `folder` (`what` says what
    it is): a full disk fails while staging, before any rename. A file entry that is a link to a file in
    another folder is replaced through the link, its new file first moved beside the link's target (copied
    there where a rename cannot reach it, on another file system), also before any rename. A process
    killed while staging leaves the staging folder (and such a moved file, which the next call, or
    remove_temporaries of the target, deletes); one killed (or an error) among the renames leaves some
    entries new and some old."""
    path, target = Path(folder), Path(os.path.realpath(folder))
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {what} {path}: it is a file, not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
        # A fixed short name: one made from the folder's would pass the longest name for a long folder name.
        _, staging = _make_beside(target / STAGING, os.mkdir)
    except OSError as error:
        raise _naming(error, what, path) from error
    # name -> its new file moved beside the target of the link of that name: renamed from the staging folder
    # onto a target on another file system, it failed with EXDEV after the entries before it were new.
    beside_targets: dict[str, Path] = {}
    try:
        yield staging
        _flush_folder(staging)
        names = sorted(os.listdir(staging), key=lambda name: (name in last, last.index(name) if name in last else 0))
        for name in names:
            linked = Path(os.path.realpath(target / name))
            # A link into the folder (into one of its own sub-folders too, which may be replaced before it)
            # is replaced within it.
            if (staging / name).is_file() and linked.is_file() and not linked.is_relative_to(target):
                remove_temporaries(linked)  # a copy an earlier save, killed, left there: a checkpoint's size
                beside_targets[name] = _move_beside(staging / name, linked)
        for name in names:
            _replace_entry(beside_targets.get(name, staging / name), target / name)
        os.rmdir(staging)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        for moved in beside_targets.values():  # those renamed into place are gone already
            moved.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _naming_staged(error, what, path, staging) from error
        raise


def _naming_staged(error: OSError, what: str, path: Path, staging: Path) -> OSError:
    """_naming(error, what, path), or, for an error that a write in the staging folder already named (write_atomically,
    naming_write_errors), that error naming its file where it was to go, `path`/<name>, not in the staging folder
    (which is gone by then)."""
    message = error.strerror if error.errno is not None else str(error)
    if not (isinstance(message, str) and message.startswith("cannot write ") and str(staging) in message):
        return _naming(error, what, path)
    message = message.replace(str(staging), str(path))
    return OSError(error.errno, message) if error.errno is not None else OSError(message)


def _flush_folder(folder: Path) -> None:
    """fsyncs every file and folder under `folder`, itself included: a rename that reaches the disk
    before the content would, after a power cut, put empty files in place of the old ones."""
    for root, _, files in os.walk(folder):
        for name in [*files, "."]:
            handle = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(handle)
            finally:
                os.close(handle)


def _move_beside(new: Path, linked: Path) -> Path:
    """The file `new` moved to a temporary name beside `linked` (temporary_name, as write_atomically's), or copied
    there and flushed to disk where a rename cannot reach it (EXDEV: another file system); that name."""
    handle, moved = _open_temporary(linked)
    try:
        with os.fdopen(handle, "wb") as copy:
            try:
                os.rename(new, moved)
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
                with open(new, "rb") as source:
                    shutil.copyfileobj(source, copy)
                copy.flush()
                os.fsync(copy.fileno())
                new.unlink()
    except BaseException:
        moved.unlink(missing_ok=True)
        raise
    return moved


def _replace_entry(new: Path, target: Path) -> None:
    """Renames `new` to `target`. A `target` that a rename cannot replace (a folder that is not empty, or any
    entry under a new folder: a symbolic link to a folder too, which is replaced itself, not written through)
    is moved into a new folder beside it first and removed after, or moved back when `new` cannot take its
    name (a full directory's ENOSPC, a Ctrl-C), so that an error leaves it old. A file `new` replaces an
    existing file with its permissions, and a link to a file through the link (its target), as
    write_atomically does."""
    if new.is_file() and target.is_file():
        target = Path(os.path.realpath(target))
        os.chmod(new, stat.S_IMODE(os.stat(target).st_mode))
    is_folder = target.is_dir() and not target.is_symlink()
    if not os.path.lexists(target) or not (is_folder or new.is_dir()):
        os.replace(new, target)
        return
    _, aside = _make_beside(target, os.mkdir, "old")
    try:
        os.rename(target, aside / target.name)
        os.rename(new, target)
    except BaseException:
        if not os.path.lexists(target):  # else the interruption came after the renames: the entry is new
            os.rename(aside / target.name, target)
        shutil.rmtree(aside)
        raise
    shutil.rmtree(aside)


def _naming(error: OSError, what: str, path: Path) -> OSError:
    """`error` with a message that names `path`: a failed write's own ("[Errno 27] File too large")
    names no file, or only the temporary one."""
    if error.errno is None:
        return OSError(f"cannot write {what} {path}: {error}")
    return OSError(error.errno, f"cannot write {what} {path}: {error.strerror}")


@contextlib.contextmanager
def naming_write_errors(what: str, path: str | Path) -> Iterator[None]:
    """Raises an OSError of the block again naming `path`, for a file written in place (an image of a
    dataset being generated): a full disk's error, raised by the write, names no file."""
    try:
        yield
    except OSError as error:
        raise _naming(error, what, Path(path)) from error


def remove_temporaries(path: str | Path) -> list[Path]:
    """Removes the temporary files of write_atomically(path) that a process killed while writing left
    beside `path`; returns them. Only names it makes match: .<name>. then 8 characters of [a-z0-9_]
    (its hex digits, and tempfile.mkstemp's, which earlier versions of save_checkpoint used) then .tmp."""
    path = Path(os.path.realpath(path))
    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    if not path.parent.is_dir():
        return []
    removed = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
    for leftover in removed:
        leftover.unlink(missing_ok=True)
    return removed
