import fcntl
import os
import threading
import types

import pytest
import torch

import tgfr.folder_lock as folder_lock_module


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def threads_seen_by(monkeypatch):
    """threads_seen_by(module, name, call) -> the torch CPU thread counts `module.name` saw when call()
    reached it (which stops the work there), the caller holding 2 threads; asserts that the caller has
    its 2 threads again afterwards."""
    def run(module, name, call):
        seen = []

        def stop(*args, **kwargs):
            seen.append(torch.get_num_threads())
            raise ValueError("stop here")

        monkeypatch.setattr(module, name, stop)
        callers = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            with pytest.raises(ValueError, match="stop here"):
                call()
            assert torch.get_num_threads() == 2
        finally:
            torch.set_num_threads(callers)
        return seen
    return run


@pytest.fixture
def lock_taken_elsewhere():
    """lock_taken_elsewhere(folder): whether a holder other than the caller has `folder`'s tgfr.folder_lock (a
    second open file description conflicts with it, as another process's does)."""
    def taken(folder) -> bool:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(descriptor)
    return taken


@pytest.fixture
def folder_held_elsewhere():
    """folder_held_elsewhere(folder): takes `folder`'s tgfr.folder_lock as another process would (a second
    open file description conflicts with it, as another process's does) until release() or the test's end;
    returns release."""
    descriptors = []

    def release():
        while descriptors:
            os.close(descriptors.pop())

    def hold(folder):
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        descriptors.append(descriptor)
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return release

    yield hold
    release()


@pytest.fixture
def calls_after_release(folder_held_elsewhere, monkeypatch):
    """calls_after_release(folder, module, name, action): runs action() while another process (as
    folder_held_elsewhere) holds `folder`, letting go of it a moment after action starts waiting for the
    folder (however long action takes to get there: a fixed delay failed on a busy machine); returns, for
    each call of `module.name` made meanwhile, whether the folder had been let go by then."""
    def run(folder, module, name, action):
        release = folder_held_elsewhere(folder)
        released = threading.Event()

        def let_go():
            if not released.is_set():
                released.set()
                release()

        def flock(descriptor, operation):
            if not operation & fcntl.LOCK_NB:  # action now waits for the folder
                threading.Timer(0.2, let_go).start()
            return fcntl.flock(descriptor, operation)

        monkeypatch.setattr(folder_lock_module, "fcntl",
                            types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB))
        function = getattr(module, name)
        seen = []

        def recording(*arguments, **options):
            seen.append(released.is_set())
            return function(*arguments, **options)

        monkeypatch.setattr(module, name, recording)
        try:
            action()
        finally:
            let_go()
        return seen
    return run
