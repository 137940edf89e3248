"""Peak host memory of a piece of code, measured in a fresh process.

The figure is the rise of the process's resident-set high-water mark (VmHWM) during `run` above
its resident set after `setup`: torch loaded, inputs made, warm-up done. Three precautions keep
it the code's own:
- The high-water mark is reset after `setup` (writing 5 to /proc/self/clear_refs), rather than
  read from getrusage's ru_maxrss: Linux hands ru_maxrss down across fork and exec, so a probe
  started from a process holding 1 GB would report a 1 GB baseline and no rise; the reset also
  keeps a transient peak of the setup (a compilation, a warm-up) out of the figure.
- A fresh interpreter keeps earlier allocations and the allocator's caches of the caller out.
- glibc's malloc raises its mmap threshold (up to 32 MiB) each time a large block is freed; blocks
  of that size then come from the heap and freed ones stay resident, so RSS would report that
  retention rather than what the code needs, penalizing code that frees and reallocates blocks
  (chunked baselines) most. The child pins the threshold at glibc's default of 128 KiB.
"""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

_PROBE = """
import gc, json, time

def _memory_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

{setup}
gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
except OSError as error:
    raise SystemExit(f"cannot reset the peak RSS through /proc/self/clear_refs ({{error}}); "
                     "no reliable peak-memory figure on this system")
baseline = _memory_kib("VmRSS")
start = time.perf_counter()
{run}
seconds = time.perf_counter() - start
peak = _memory_kib("VmHWM")
print("TGFR_MEMORY " + json.dumps({{"baseline_kib": baseline, "peak_kib": peak, "seconds": seconds}}))
"""
_MMAP_THRESHOLD_BYTES = 128 * 1024


@dataclass(frozen=True)
class PeakMemory:
    baseline_bytes: int
    peak_bytes: int
    seconds: float

    @property
    def rise_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes


def measure_peak_rss_rise(setup: str, run: str, timeout: float = 1800.0, cwd: str | None = None) -> PeakMemory:
    """Runs `setup` then `run` (Python source) in a fresh interpreter; returns its peak memory
    (bytes above the resident set after `setup`) and the wall time of `run`.

    Raises RuntimeError with the child's stderr if it fails (e.g. killed for lack of memory).
    """
    source = _PROBE.format(setup=textwrap.dedent(setup), run=textwrap.dedent(run))
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD_BYTES)}
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=timeout,
                            env=environment, cwd=cwd)
    for line in result.stdout.splitlines():
        if line.startswith("TGFR_MEMORY "):
            figures = json.loads(line[len("TGFR_MEMORY "):])
            return PeakMemory(figures["baseline_kib"] * 1024, figures["peak_kib"] * 1024, figures["seconds"])
    raise RuntimeError(f"memory probe failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
