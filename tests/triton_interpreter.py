"""Running a test file's Triton cases under the Triton interpreter, in a child process.

TRITON_INTERPRET=1 has to be set before the kernels are decorated, and setting it in the test
process would turn every Triton kernel of the session into the interpreter's (the GPU tests
included). A file marks its interpreted cases `interpreted_only` and has one test call
`run_interpreted(__file__)`, which runs the file again with the variable set.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
ROOT = Path(__file__).resolve().parents[1]

interpreted_only = pytest.mark.skipif(
    not INTERPRETED, reason="runs inside test_interpreter_suite's child process (TRITON_INTERPRET=1)"
)
# For the one test per file that starts the child process.
parent_only = pytest.mark.skipif(
    INTERPRETED or not HAS_TRITON, reason="this is the child process" if INTERPRETED else "triton missing"
)


def run_interpreted(test_file: str) -> str:
    """Runs test_file's tests but test_interpreter_suite with TRITON_INTERPRET=1; asserts they
    passed and returns pytest's summary line."""
    environment = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning",
         "-k", "not test_interpreter_suite", test_file],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary, result.stdout[-2000:]
    return summary
