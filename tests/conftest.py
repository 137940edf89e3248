import fcntl
import os
import threading

import pytest
import torch


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
    folder_held_elsewhere) holds `folder` for its first second; returns, for each call of `module.name`
    made meanwhile, whether the folder had been let go by then."""
    def run(folder, module, name, action):
        release = folder_held_elsewhere(folder)
        released = threading.Event()

        def let_go():
            released.set()
            release()

        function = getattr(module, name)
        seen = []

        def recording(*arguments, **options):
            seen.append(released.is_set())
            return function(*arguments, **options)

        monkeypatch.setattr(module, name, recording)
        timer = threading.Timer(1.0, let_go)
        timer.start()
        try:
            action()
        finally:
            timer.join()
        return seen
    return run
