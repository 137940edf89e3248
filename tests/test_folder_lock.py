"""tgfr.folder_lock: the lock goes with the process that took it."""

import errno
import fcntl
import multiprocessing
import os
import threading
import time

import pytest

from tgfr.folder_lock import folder_lock


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path, lock_taken_elsewhere):
    """A DataLoader worker forked while tgfr train holds its run folder outlived a SIGKILLed trainer for
    seconds, and with it the lock: an immediate --resume was refused."""
    fork = multiprocessing.get_context("fork")
    running = fork.Event()  # set once the child runs, after the fork's handlers

    def child_body():
        running.set()
        time.sleep(60)

    with folder_lock(tmp_path, in_use="in use"):
        assert lock_taken_elsewhere(tmp_path)
        child = fork.Process(target=child_body)
        child.start()
        assert running.wait(30)
        assert lock_taken_elsewhere(tmp_path)  # the parent still holds it
    try:
        assert not lock_taken_elsewhere(tmp_path)
    finally:
        child.kill()
        child.join()


def test_a_held_folder_is_refused_with_the_callers_message(tmp_path, folder_held_elsewhere, lock_taken_elsewhere):
    release = folder_held_elsewhere(tmp_path)
    with pytest.raises(ValueError, match="^another writer$"):
        with folder_lock(tmp_path, in_use="another writer"):
            pass
    release()
    with folder_lock(tmp_path, in_use="another writer"):
        assert lock_taken_elsewhere(tmp_path)
    assert not lock_taken_elsewhere(tmp_path)


def test_a_released_locks_descriptor_number_is_left_to_its_next_owner_in_a_forked_child(tmp_path):
    """A forked child closes the descriptors of the locks its parent holds, not those of locks released
    since: the number goes to the next file opened, which the child would lose."""
    with folder_lock(tmp_path):
        pass
    path = tmp_path / "data.txt"
    path.write_text("kept")
    with open(path) as reused:  # most likely the released lock's number
        pid = os.fork()
        if pid == 0:
            try:
                os._exit(0 if os.read(reused.fileno(), 4) == b"kept" else 1)
            except OSError:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_file_system_without_locks_runs_the_block_unguarded(tmp_path, monkeypatch):
    """Some network file systems refuse flock (ENOLCK): refusing the folder would make them unusable."""
    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = False
    with folder_lock(tmp_path, in_use="in use"):
        ran = True
    assert ran


def test_a_second_writer_is_refused_or_waits_until_the_first_lets_go(tmp_path):
    """Each folder_lock opens the folder anew, and two open file descriptions' flocks conflict as two processes'
    do: a shared lock would let both writers in at once."""
    events = []
    with folder_lock(tmp_path, in_use="first writer"):
        with pytest.raises(ValueError, match="^second writer$"):
            with folder_lock(tmp_path, in_use="second writer"):
                pass

        def wait_for_the_folder():
            with folder_lock(tmp_path):
                events.append("second writer in")

        waiting = threading.Thread(target=wait_for_the_folder, daemon=True)
        waiting.start()
        time.sleep(0.5)  # the second writer's time to get in, were it not kept waiting
        events.append("first writer out")
    waiting.join(30)
    assert events == ["first writer out", "second writer in"]
