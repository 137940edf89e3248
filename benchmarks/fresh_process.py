"""Peak memory of one benchmark step in a fresh process: the rise of its RSS high-water mark
above its RSS after setup (torch loaded, inputs made, warm-up done), through
tgfr.memory.measure_peak_rss_rise (which explains the precautions), with an optional cap that
turns a step far past a memory budget into an allocation failure.
"""

from pathlib import Path

from tgfr.memory import PeakMemory, measure_peak_rss_rise

_ROOT = Path(__file__).resolve().parents[1]

# Warm-up at size 4 first, so the baseline holds the thread pool, the allocator's first arenas and
# (compiled baselines) the compiled graph. An optional address-space cap turns a step that would
# run far past a budget into an allocation failure instead of swapping the machine.
_STEP_SETUP = """
import resource
from {module} import make_step
make_step({implementation!r}, {passes!r}, 4, {dtype!r})()
step = make_step({implementation!r}, {passes!r}, {size}, {dtype!r})
if {cap_bytes}:
    with open("/proc/self/status") as status:
        virtual_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (virtual_kib * 1024 + {cap_bytes}, resource.RLIM_INFINITY))
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
        return measure_peak_rss_rise(setup, "step()", cwd=str(_ROOT))
    except RuntimeError as error:
        if any(marker in str(error) for marker in _OUT_OF_MEMORY_MARKERS):
            raise StepOutOfMemory(str(error)) from None
        raise
