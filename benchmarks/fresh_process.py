"""Peak memory of one benchmark step in a fresh process: the rise of its RSS high-water mark
above its RSS after setup (torch loaded, inputs made, warm-up done).

It runs tgfr.memory.measure_peak_rss_rise with three precautions:
- Linux hands a process's RSS high-water mark down to the program it execs (getrusage's
  ru_maxrss keeps the larger), so a probe started straight from a pytest process that has held
  1 GB reports a 1 GB baseline and no rise. A small launcher (Python without torch) sits in
  between: the probe inherits the launcher's few MiB, below its own torch-loaded baseline.
- The probe's setup resets its high-water mark after the warm-up (/proc/self/clear_refs), so a
  transient peak there (torch.compile's compilation) does not hide the step's own.
- glibc's malloc raises its mmap threshold (up to 32 MiB) each time a large block is freed;
  blocks of that size then come from the heap, and freed ones stay resident. RSS would report
  that retention rather than what the code needs, penalizing most the baselines that free and
  reallocate blocks (chunked). The probe pins the threshold at glibc's default 128 KiB
  (MALLOC_MMAP_THRESHOLD_), the same for every implementation.
"""

import json
import os
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
        [sys.executable, "-c", _LAUNCHER, setup, run], cwd=_ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    if "error" in figures:
        raise RuntimeError(figures["error"])
    return PeakMemory(**figures)


# Warm-up at size 4 first, so the baseline holds the thread pool, the allocator's first arenas and
# (compiled baselines) the compiled graph; writing 5 to clear_refs then resets the high-water mark
# to the current RSS. An optional address-space cap turns a step that would run far past a budget into an
# allocation failure instead of swapping the machine.
_STEP_SETUP = """
import gc, resource
from {module} import make_step
make_step({implementation!r}, {passes!r}, 4, {dtype!r})()
step = make_step({implementation!r}, {passes!r}, {size}, {dtype!r})
if {cap_bytes}:
    with open("/proc/self/status") as status:
        virtual_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (virtual_kib * 1024 + {cap_bytes}, resource.RLIM_INFINITY))
gc.collect()
with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("5")
"""

_OUT_OF_MEMORY_MARKERS = ("can't allocate memory", "MemoryError", "Cannot allocate memory", "std::bad_alloc")


class StepOutOfMemory(RuntimeError):
    """A step in a fresh process failed to allocate under its address-space cap."""


def measure_step(module: str, implementation: str, passes: str, size: int, dtype: str, cap_bytes: int = 0) -> PeakMemory:
    """Peak RSS rise (and wall time) of `step()` from `module`.make_step(implementation, passes, size, dtype).

    The step's inputs are made before the baseline is read. With cap_bytes > 0 the process may
    map at most cap_bytes more than after its warm-up; an allocation beyond raises
    StepOutOfMemory. Any other failure raises RuntimeError.
    """
    setup = _STEP_SETUP.format(module=module, implementation=implementation, passes=passes, size=size,
                               dtype=dtype, cap_bytes=cap_bytes)
    try:
        return measure_peak_rss_rise(setup, "step()")
    except RuntimeError as error:
        if any(marker in str(error) for marker in _OUT_OF_MEMORY_MARKERS):
            raise StepOutOfMemory(str(error)) from None
        raise
