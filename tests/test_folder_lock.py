"""tgfr.folder_lock: the lock goes with the process that took it."""

import fcntl
import multiprocessing
import os
import time

import pytest

from tgfr.folder_lock import folder_lock


def _taken_elsewhere(folder) -> bool:
    """Whether another holder has `folder`'s lock (a second open file description conflicts as another
    process's does)."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path):
    """A DataLoader worker forked while tgfr train holds its run folder outlived a SIGKILLed trainer for
    seconds, and with it the lock: an immediate --resume was refused."""
    fork = multiprocessing.get_context("fork")
    running = fork.Event()  # set once the child runs, after the fork's handlers

    def child_body():
        running.set()
        time.sleep(60)

    with folder_lock(tmp_path, in_use="in use"):
        assert _taken_elsewhere(tmp_path)
        child = fork.Process(target=child_body)
        child.start()
        assert running.wait(30)
        assert _taken_elsewhere(tmp_path)  # the parent still holds it
    try:
        assert not _taken_elsewhere(tmp_path)
    finally:
        child.kill()
        child.join()


def test_a_held_folder_is_refused_with_the_callers_message(tmp_path, folder_held_elsewhere):
    release = folder_held_elsewhere(tmp_path)
    with pytest.raises(ValueError, match="^another writer$"):
        with folder_lock(tmp_path, in_use="another writer"):
            pass
    release()
    with folder_lock(tmp_path, in_use="another writer"):
        assert _taken_elsewhere(tmp_path)
    assert not _taken_elsewhere(tmp_path)
