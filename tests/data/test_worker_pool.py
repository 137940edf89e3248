"""The data commands' worker processes: a worker that dies is an error, not a wait for ever."""

import os
import subprocess
import sys
import textwrap

import pytest

from tgfr.data.worker_pool import WorkerPool


def test_a_worker_that_dies_is_a_child_process_error():
    with WorkerPool(2) as pool:
        assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
        with pytest.raises(ChildProcessError, match="a worker process ended abruptly"):
            pool.map(os._exit, [9])


def test_a_script_without_a_main_guard_fails_instead_of_waiting(tmp_path):
    """Each spawned worker imports the script again, which starts a pool of its own while it is still
    starting: the worker fails, and multiprocessing.Pool replaced it with another for ever."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from tgfr.data import SyntheticConfig, generate_synthetic_dataset
        generate_synthetic_dataset({str(tmp_path / "synth")!r}, SyntheticConfig(identities=10, images_per_identity=1),
                                   workers=2)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("ChildProcessError: a worker process ended abruptly")
