"""tgfr.memory.measure_peak_rss_rise, launched so that the parent's memory cannot mask the figure.

Linux hands a process's RSS high-water mark down to the program it execs (getrusage's ru_maxrss
is the maximum of the pre-exec and the new one), so a probe started straight from a pytest
process that has held 1 GB reports a 1 GB baseline and a zero rise. A small launcher process
(Python without torch) sits in between: the probe's inherited mark is then the launcher's few
MiB, below the probe's own torch-loaded baseline.
"""

import json
import subprocess
import sys
from pathlib import Path

from tgfr.memory import PeakMemory

_LAUNCHER = """
import json, sys
from tgfr.memory import measure_peak_rss_rise
try:
    memory = measure_peak_rss_rise(sys.argv[1], sys.argv[2])
except RuntimeError as error:
    print(json.dumps({"error": str(error)}))
else:
    print(json.dumps({"baseline_bytes": memory.baseline_bytes, "peak_bytes": memory.peak_bytes,
                      "seconds": memory.seconds}))
"""
_ROOT = Path(__file__).resolve().parents[1]


def measure_peak_rss_rise(setup: str, run: str) -> PeakMemory:
    """Runs `setup` then `run` (Python source) in a fresh interpreter; returns its peak memory.

    Raises RuntimeError carrying the probe's stderr if it fails.
    """
    result = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, setup, run], cwd=_ROOT, capture_output=True, text=True, check=True
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    if "error" in figures:
        raise RuntimeError(figures["error"])
    return PeakMemory(**figures)
