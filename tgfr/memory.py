"""Peak host memory of a piece of code, measured in a fresh process.

The figure is the rise of the process's RSS high-water mark (getrusage ru_maxrss) during `run`
above its value after `setup`: torch loaded, inputs made, warm-up done. A fresh process keeps
earlier allocations (and the allocator's cache) out of the measurement.
"""

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass

_PROBE = """
import gc, json, resource, time
{setup}
gc.collect()
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
{run}
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("TGFR_MEMORY " + json.dumps({{"baseline_kib": baseline, "peak_kib": peak, "seconds": seconds}}))
"""


@dataclass(frozen=True)
class PeakMemory:
    baseline_bytes: int
    peak_bytes: int
    seconds: float

    @property
    def rise_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes


def measure_peak_rss_rise(setup: str, run: str, timeout: float = 1800.0) -> PeakMemory:
    """Runs `setup` then `run` (Python source) in a fresh interpreter; returns its peak memory.

    Raises RuntimeError with the child's stderr if it fails (e.g. killed for lack of memory).
    """
    source = _PROBE.format(setup=textwrap.dedent(setup), run=textwrap.dedent(run))
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=timeout)
    for line in result.stdout.splitlines():
        if line.startswith("TGFR_MEMORY "):
            figures = json.loads(line[len("TGFR_MEMORY "):])
            return PeakMemory(figures["baseline_kib"] * 1024, figures["peak_kib"] * 1024, figures["seconds"])
    raise RuntimeError(f"memory probe failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
